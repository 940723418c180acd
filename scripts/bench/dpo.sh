#!/usr/bin/env bash
# DPO speed and memory: afinar's `dpo` recipe against TRL's DPOTrainer (+ PEFT), the same work for
# both: SmolLM2-135M-Instruct dequantized to f32 (as scripts/bench/finetune.sh), LoRA rank 8
# alpha 16 on q_proj,v_proj, sigmoid loss with beta 0.1, the reference = the model with its
# adapters off, run on every step (afinar's reference.kind adapters_off, TRL's
# precompute_ref_log_probs False), 4 pairs per step in file order, AdamW lr 3e-4 (weight decay
# 0.01), clipping 1.0, 2 threads. The pairs (finetune_data.py --pairs: conversational, a short
# question and two long answers) are so long that both frameworks cut every sequence to exactly
# 512 tokens (the prompt whole, each response's start), so a step runs 4 pairs × 2 sequences ×
# 512 = 4096 sequence tokens (prompt + chosen and prompt + rejected; no padding) through the
# policy's forward and backward and the reference's forward, in both: tokens/s counts those.
# STEPS optimizer steps per run; the first is warm-up and not timed. The step-1 check column is
# the mean log-probability of the chosen responses before any update (logps/chosen, summed over
# each response's tokens): the same in both when they read the same tokens (afinar's LoRA runs
# keep their frozen weights in bf16 by default, so expect it to differ in the third digit).
# Prints a table (tokens/s, ratio to TRL, peak RSS from /usr/bin/time -v), the processor and
# afinar's CPU level; exits non-zero if a run fails.
#
#   REPEATS=2 scripts/bench/dpo.sh
# Environment: STEPS (4), REPEATS (2), THREADS (2), FRAMEWORKS ("afinar trl"),
#   AFINAR_DTYPE (model.dtype of afinar; default bf16, as the shipped LoRA configs),
#   AFINAR_EXTRA (key=value overrides for afinar), WORK, AFINAR_BIN: as in finetune.sh.
# Needs: scripts/reference-venv.sh (transformers, PEFT, TRL 1.16).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
default_steps=4
REPEATS=${REPEATS:-2}
bench_setup dpo "afinar trl"
bench_data --docs 0 --pairs $(( steps * batch ))
tokens=$(( batch * 2 * seq ))

bench_start "$steps steps (first = warm-up), $batch pairs × 2 × $seq tokens"
for round in $(seq "$repeats"); do
  for fw in $frameworks; do
    bench_round "$fw" "$round"
    case $fw in
      afinar)
        afinar_common "$dir" "${AFINAR_DTYPE:-bf16}"
        timed "$dir/time.txt" "$dir/run.log" "$AFINAR_BIN" run dpo --config smollm2_135m_dpo_lora \
          dataset.kind=preference dataset.source="$work/prefs.jsonl" dataset.long_rows=truncate \
          loss.kind=sigmoid loss.beta=0.1 loss.label_smoothing=0.0 reference.kind=adapters_off \
          "${afinar_args[@]}" || bench_failed "$fw" "$dir"
        runs+=("dpo|afinar|afinar|$dir/out/metrics.jsonl|$dir/time.txt|$round") ;;
      trl)
        timed "$dir/time.txt" "$dir/run.log" "$py" scripts/bench/trl_dpo.py "$work" --steps "$steps" \
          --batch "$batch" --threads "$threads" --seq "$seq" || bench_failed "$fw" "$dir"
        runs+=("dpo|TRL DPOTrainer + PEFT|hf|$dir/run.log|$dir/time.txt|$round") ;;
      *) echo "dpo: unknown framework $fw" >&2; exit 2 ;;
    esac
  done
done
bench_report --tokens "$tokens" --check logps/chosen $batch $seq
