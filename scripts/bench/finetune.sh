#!/usr/bin/env bash
# Fine-tuning speed and memory: afinar against transformers + PEFT and torchtune, the same work for
# all: SmolLM2-135M-Instruct dequantized to f32 (from the Q4_1 GGUF), batch 4 × 512 tokens, every
# row a full 512-token slice of seeded random runs of data/bilingual_instruct.jsonl examples, so
# each step trains on exactly 4 × 511 = 2044 label tokens in every framework (nothing masked, no
# padding); AdamW lr 3e-4 (weight decay 0.01), gradient clipping 1.0, fp32, no activation
# checkpointing, 2 threads. Modes: LoRA rank 8 alpha 16 on q_proj,v_proj, and full fine-tuning.
# STEPS optimizer steps per run; the first is warm-up and not timed. Every framework takes the rows
# in file order (no shuffling), so the step-1 loss (before any update) must be the same in all:
# the table shows it as a check that they really do the same work.
# Prints a table (label tokens/s, ratio to the fastest peer, peak RSS from /usr/bin/time -v);
# exits non-zero if a run fails.
#
#   scripts/bench/finetune.sh
# Environment: STEPS (6), THREADS (2), MODES ("lora full"), FRAMEWORKS ("afinar hf torchtune"),
#   AFINAR_EXTRA / TT_EXTRA (key=value overrides for afinar / torchtune),
# AFINAR_DTYPE (afinar's model.dtype; default bf16 for LoRA, as the shipped LoRA configs: frozen
#   weights in bf16, bf16 matrix products with f32 sums; fp32 for full fine-tuning),
#   WORK (folder for data, logs and checkpoints; default a temporary one, removed at the end),
#   AFINAR_BIN (skip `cargo build --release -p afinar-cli` and use this binary),
#   AFINAR_LEVELS (words; default "machine"): afinar runs once per word in every round, each word
#     a CPU level to cap the kernels at (AFINAR_CPU_LEVEL; "machine": no cap), optionally
#     LEVEL:BINARY to run another build there (e.g. avx2:target-avx2/release/afinar, built with
#     `--no-default-features --features cuda` so that the gemm crate's f32 products are not
#     AVX-512 either; see the engine's gemm-avx512 feature),
#   REPEATS (1): rounds; each round runs every framework once, in turn, so that the machine's
#   slow and fast minutes fall on all of them; with more than one the report adds medians and
#   the range of the per-round ratios.
# Needs: scripts/reference-venv.sh (transformers, PEFT comes with it below) and
# scripts/bench/torchtune-venv.sh (separate venv: torchtune 0.6.1 pins torch 2.7.1).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
modes=${MODES:-lora full}
bench_setup finetune "afinar hf torchtune"
bench_data --docs $(( (steps + 2) * batch ))

bench_start "$steps steps (first = warm-up), batch $batch × $seq"
for round in $(seq "$repeats"); do
for mode in $modes; do
  for fw in $frameworks; do
    bench_round "${fw}_$mode" "$round"
    case $fw in
      afinar)
        recipe=${mode}_finetune
        dtype=${AFINAR_DTYPE:-fp32}
        [ "$mode" = lora ] && dtype=${AFINAR_DTYPE:-bf16}
        base=$dir
        for variant in ${AFINAR_LEVELS:-machine}; do
          level=${variant%%:*}; bin=$AFINAR_BIN; name=afinar
          [ "$variant" != "$level" ] && bin=${variant#*:}
          [ "$level" != machine ] && name="afinar $level"
          dir=$base${level/machine/}; mkdir -p "$dir"
          afinar_common "$dir" "$dtype" "$mode"
          cap=(); [ "$level" != machine ] && cap=(AFINAR_CPU_LEVEL="$level")
          echo "$bench_name: $name: $(env "${cap[@]}" "$bin" --version | grep -i 'cpu level')" >&2
          timed "$dir/time.txt" "$dir/run.log" env "${cap[@]}" "$bin" run "$recipe" --config "smollm2_135m_$mode" \
            dataset.kind=text dataset.source="$work/docs.jsonl" dataset.packed=false "${afinar_args[@]}" \
            || bench_failed "$name $mode" "$dir"
          runs+=("$mode|$name|afinar|$dir/out/metrics.jsonl|$dir/time.txt|$round")
        done ;;
      hf)
        name="transformers"; [ "$mode" = lora ] && name="transformers + PEFT"
        timed "$dir/time.txt" "$dir/run.log" "$py" scripts/bench/hf_finetune.py "$work" --mode "$mode" \
          --steps "$steps" --batch "$batch" --threads "$threads" || bench_failed "transformers $mode" "$dir"
        runs+=("$mode|$name|hf|$dir/run.log|$dir/time.txt|$round") ;;
      torchtune)
        recipe=lora_finetune_single_device; [ "$mode" = full ] && recipe=full_finetune_single_device
        torchtune_run "$dir" "$mode" "$recipe" || bench_failed "torchtune $mode" "$dir"
        runs+=("$mode|torchtune|torchtune|$dir/log_*.txt|$dir/time.txt|$round") ;;
      *) echo "finetune: unknown framework $fw" >&2; exit 2 ;;
    esac
  done
done
done
bench_report $batch $seq
