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
#   REPEATS (1): rounds; each round runs every framework once, in turn, so that the machine's
#   slow and fast minutes fall on all of them; with more than one the report adds medians and
#   the range of the per-round ratios.
# Needs: scripts/reference-venv.sh (transformers, PEFT comes with it below) and
# scripts/bench/torchtune-venv.sh (separate venv: torchtune 0.6.1 pins torch 2.7.1).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${STEPS:-6}
repeats=${REPEATS:-1}
threads=${THREADS:-2}
modes=${MODES:-lora full}
frameworks=${FRAMEWORKS:-afinar hf torchtune}
batch=${BATCH:-4}   # change only to debug the script quickly
seq=512
assets=$(./scripts/fetch-assets.sh)
gguf=$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
py=$(./scripts/reference-venv.sh)
"$py" -c 'import peft' 2>/dev/null || "$py" -m pip install --quiet peft==0.21.2 >&2
case " $frameworks " in *" torchtune "*) ttpy=$(./scripts/bench/torchtune-venv.sh) ;; esac
case " $frameworks " in *" afinar "*)
  if [ -z "${AFINAR_BIN:-}" ]; then
    cargo build --quiet --release -p afinar-cli >&2
    AFINAR_BIN=target/release/afinar
  fi ;;
esac
if [ -n "${WORK:-}" ]; then
  work=$WORK; mkdir -p "$work"
else
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fi
work=$(cd "$work" && pwd)
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
ndocs=$(( (steps + 2) * batch ))
TQDM_DISABLE=1 "$py" scripts/bench/finetune_data.py "$gguf" "$work" --docs "$ndocs" --seq "$seq" >&2

echo "finetune: $steps steps (first = warm-up), batch $batch × $seq, $threads threads; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
runs=()
fail=0
timed() { # time_file log command...: runs the command under /usr/bin/time -v
  local tf=$1 log=$2; shift 2
  /usr/bin/time -v -o "$tf" "$@" > "$log" 2>&1
}
for round in $(seq "$repeats"); do
for mode in $modes; do
  for fw in $frameworks; do
    dir=$work/${fw}_${mode}_r$round
    rm -rf "$dir"; mkdir -p "$dir"
    echo "finetune: round $round, $fw $mode (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    case $fw in
      afinar)
        recipe=${mode}_finetune
        dtype=${AFINAR_DTYPE:-fp32}
        [ "$mode" = lora ] && dtype=${AFINAR_DTYPE:-bf16}
        extra=(optimizer.lr=3e-4)
        # AFINAR_EXTRA: more key=value overrides for afinar (e.g. enable_activation_checkpointing=true)
        read -r -a more <<< "${AFINAR_EXTRA:-}"
        extra+=("${more[@]}")
        [ "$mode" = lora ] && extra+=(lora.rank=8 lora.alpha=16 lora.dropout=0.0 "lora.target_modules=[q_proj,v_proj]" \
          save_adapter_weights_only=true merge_adapter=false)
        if ! timed "$dir/time.txt" "$dir/run.log" "$AFINAR_BIN" run "$recipe" --config "smollm2_135m_$mode" \
            output_dir="$dir/out" model.path="$work/model" model.dtype="$dtype" \
            dataset.kind=text dataset.source="$work/docs.jsonl" dataset.packed=false tokenizer.max_seq_len=$seq \
            batch_size=$batch epochs=1 max_steps_per_epoch="$steps" gradient_accumulation_steps=1 \
            shuffle=false seed=0 threads="$threads" optimizer.weight_decay=0.01 clip_grad_norm=1.0 \
            enable_activation_checkpointing=false log_every_n_steps=1 "${extra[@]}"; then
          echo "finetune: afinar $mode failed:" >&2; tail -5 "$dir/run.log" >&2; fail=1
        fi
        runs+=("$mode|afinar|afinar|$dir/out/metrics.jsonl|$dir/time.txt|$round") ;;
      hf)
        name="transformers"; [ "$mode" = lora ] && name="transformers + PEFT"
        if ! timed "$dir/time.txt" "$dir/run.log" "$py" scripts/bench/hf_finetune.py "$work" --mode "$mode" \
            --steps "$steps" --batch "$batch" --threads "$threads"; then
          echo "finetune: transformers $mode failed:" >&2; tail -5 "$dir/run.log" >&2; fail=1
        fi
        runs+=("$mode|$name|hf|$dir/run.log|$dir/time.txt|$round") ;;
      torchtune)
        recipe=lora_finetune_single_device; [ "$mode" = full ] && recipe=full_finetune_single_device
        rm -rf "$work/tt_$mode"
        cfg=$("$ttpy" scripts/bench/tt_bench.py config "$work" --mode "$mode" --steps "$steps" --batch "$batch")
        # TT_EXTRA: key=value overrides for torchtune (e.g. optimizer_in_bwd=True clip_grad_norm=null)
        read -r -a tt_more <<< "${TT_EXTRA:-}"
        if ! timed "$dir/time.txt" "$dir/run.log" env PYTHONPATH="$PWD/scripts/bench" \
            "$(dirname "$ttpy")/tune" run "$recipe" --config "$cfg" "${tt_more[@]}"; then
          echo "finetune: torchtune $mode failed:" >&2; tail -5 "$dir/run.log" >&2; fail=1
        fi
        cp "$work"/tt_$mode/logs/log_*.txt "$dir/" 2>/dev/null || true
        runs+=("$mode|torchtune|torchtune|$dir/log_*.txt|$dir/time.txt|$round") ;;
      *) echo "finetune: unknown framework $fw" >&2; exit 2 ;;
    esac
  done
done
done
python3 scripts/bench/finetune_report.py $batch $seq "${runs[@]}" || fail=1
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit $fail
