#!/usr/bin/env bash
# Knowledge-distillation speed and memory: afinar's `knowledge_distillation` recipe against
# torchtune 0.6.1's `knowledge_distillation_single_device`, the same work for both. Teacher and
# student are the same model, SmolLM2-135M-Instruct dequantized to f32 (as scripts/bench/
# finetune.sh; no larger SmolLM2 is obtainable here): the teacher frozen, forward only; the
# student with LoRA rank 8 alpha 16 on q_proj,v_proj; loss (1 - 0.5) · CE + 0.5 · forward KL
# (temperature 1, torchtune's ForwardKLWithChunkedOutputLoss); batch 4 × 512 tokens, the rows of
# finetune.sh (every row a full 512-token slice, nothing masked: 4 × 511 = 2044 label tokens per
# step, which tokens/s counts); AdamW lr 3e-4 (weight decay 0.01), clipping 1.0, fp32 on
# torchtune's side, 2 threads. STEPS optimizer steps per run, the first untimed. The step-1 loss
# (before any update, with teacher = student: half the cross-entropy plus a KL of zero) must be
# the same in both: the table shows it as the check that they do the same work (afinar's LoRA
# runs keep frozen weights in bf16 by default, teacher included: expect the fourth digit to move).
# Prints a table (label tokens/s, ratio to torchtune, peak RSS from /usr/bin/time -v), the
# processor and afinar's CPU level; exits non-zero if a run fails.
#
#   REPEATS=2 scripts/bench/kd.sh
# Environment: STEPS (5), REPEATS (2), THREADS (2), FRAMEWORKS ("afinar torchtune"),
#   AFINAR_DTYPE (afinar's model.dtype, default bf16 as the shipped LoRA configs; the teacher is
#   then bf16 too, with fp32 it is kept as stored, f32), AFINAR_EXTRA / TT_EXTRA, WORK, AFINAR_BIN:
#   as in finetune.sh.
# Needs: scripts/reference-venv.sh (the data) and scripts/bench/torchtune-venv.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
default_steps=5
REPEATS=${REPEATS:-2}
bench_setup kd "afinar torchtune"
bench_data --docs $(( (steps + 2) * batch ))
dtype=${AFINAR_DTYPE:-bf16}
teacher_dtype=bf16; [ "$dtype" = fp32 ] && teacher_dtype=as_stored

bench_start "$steps steps (first = warm-up), batch $batch × $seq, teacher = student"
for round in $(seq "$repeats"); do
  for fw in $frameworks; do
    bench_round "$fw" "$round"
    case $fw in
      afinar)
        afinar_common "$dir" "$dtype"
        timed "$dir/time.txt" "$dir/run.log" "$AFINAR_BIN" run knowledge_distillation \
          --config smollm2_360m_to_135m_kd_lora teacher.path="$work/model" teacher.dtype="$teacher_dtype" \
          kd_ratio=0.5 kd_loss=forward_kl temperature=1.0 \
          dataset.kind=text dataset.source="$work/docs.jsonl" dataset.packed=false "${afinar_args[@]}" \
          || bench_failed "$fw" "$dir"
        runs+=("kd|afinar|afinar|$dir/out/metrics.jsonl|$dir/time.txt|$round") ;;
      torchtune)
        torchtune_run "$dir" kd knowledge_distillation_single_device || bench_failed "$fw" "$dir"
        runs+=("kd|torchtune|torchtune|$dir/log_*.txt|$dir/time.txt|$round") ;;
      *) echo "kd: unknown framework $fw" >&2; exit 2 ;;
    esac
  done
done
bench_report $batch $seq
