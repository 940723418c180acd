#!/usr/bin/env bash
# GRPO speed and memory: afinar's `grpo` recipe (the shipped config smollm2_135m_grpo_lora)
# against TRL 1.16's GRPOTrainer (+ PEFT), the same work for both as far as TRL allows:
# SmolLM2-135M-Instruct dequantized to f32 (as scripts/bench/finetune.sh; afinar keeps its frozen
# weights in bf16 by default, AFINAR_DTYPE; TRL runs fp32), LoRA rank 16 alpha 32 dropout 0 on all
# seven projections; per optimizer step BATCH (4) prompts of data/grpo_arith/train.jsonl in file
# order × 8 completions = 32, sampled with temperature 1, top_p 1, no top-k, at most 64 new
# tokens, and trained in 2 micro-batches of 16 (TRL: per_device_train_batch_size 16, gradient
# accumulation 2 = steps_per_generation); beta 0 (no reference pass), loss dapo, epsilon 0.2 /
# epsilon_high 0.28, one iteration per generation, rewards scaled by the group's std; the shipped
# rewards (0.7 numeric match, 0.2 answer-line format, 0.1 language; TRL: equivalent Python
# functions in trl_grpo.py); AdamW lr 2e-4 (the shipped config's), no weight decay, clipping 1.0.
#
# Completion lengths: TRL samples until EOS or max_completion_length and has no stop strings;
# afinar cannot ignore EOS (its tokenizer's stop tokens always end a completion), so afinar runs
# with grpo.stop=[] (no stop strings: the shipped config's "\nQuestion:" etc. are dropped) and
# both end a completion at EOS (<|im_end|>) or after 64 tokens. The completions then differ (own
# samplers), so the table shows both rates: prompts/s (the issue's figure) and completion
# tokens/s (completion tokens trained on per step, EOS included: afinar's label_tokens, TRL's
# completion-mask sum), with the step-1 mean completion length as the check column. Note that
# TRL decodes the 32 rows as one padded batch until the longest ends, afinar drops finished rows.
#
# STEPS optimizer steps per run; the first is warm-up and not timed: prompts/s = prompts of the
# timed steps / their seconds (generation, rewards, training passes and the optimizer step; both
# frameworks' step clocks start before the sampling). Rounds alternate the frameworks. Prints the
# two tables (ratio to TRL, peak RSS from /usr/bin/time -v), the processor and afinar's CPU
# level; exits non-zero if a run fails. The issue's bar: afinar ≥ 2× TRL's prompts/s at ≤ 0.25×
# its peak RSS. Time: TRL's fp32 step is slow on the CPU (smoke test, STEPS=2 on 2 shared cores,
# ~1 core each: afinar ~51 s per step, 2.2 GB; TRL ~400 s per step, 11.4 GB, 822 CPU-seconds for
# the run against afinar's 98), so the default 4 steps × 2 rounds can take an hour or more.
#
#   REPEATS=2 scripts/bench/grpo.sh
# Environment: STEPS (4), REPEATS (2), THREADS (2), FRAMEWORKS ("afinar trl"),
#   AFINAR_DTYPE (afinar's model.dtype; default bf16, as the shipped config),
#   AFINAR_EXTRA (key=value overrides for afinar, last: they win; e.g. 'grpo.stop=["\nQuestion:"]'),
#   TRL_EXTRA (more trl_grpo.py options, e.g. --min-new-tokens 64), WORK, AFINAR_BIN: as in
#   finetune.sh; BATCH (4): prompts per step.
# Needs: scripts/reference-venv.sh (transformers, PEFT, TRL 1.16).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
default_steps=4
REPEATS=${REPEATS:-2}
bench_setup grpo "afinar trl"
bench_data --docs 0
data=$PWD/data/grpo_arith/train.jsonl
gens=8 micro=2 max_completion=64
[ $(( batch * steps )) -le "$(grep -c . "$data")" ] || { echo "grpo: not enough prompts" >&2; exit 2; }

bench_start "$steps steps (first = warm-up), $batch prompts × $gens completions ≤ $max_completion tokens"
for round in $(seq "$repeats"); do
  for fw in $frameworks; do
    bench_round "$fw" "$round"
    case $fw in
      afinar)
        read -r -a more <<< "${AFINAR_EXTRA:-}"
        timed "$dir/time.txt" "$dir/run.log" "$AFINAR_BIN" run grpo --config smollm2_135m_grpo_lora \
          output_dir="$dir/out" model.path="$work/model" model.dtype="${AFINAR_DTYPE:-bf16}" \
          dataset.source="$data" shuffle=false seed=0 threads="$threads" batch_size="$batch" epochs=1 \
          max_steps_per_epoch="$steps" gradient_accumulation_steps=$micro \
          lora.rank=16 lora.alpha=32 lora.dropout=0.0 \
          "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]" \
          grpo.num_generations=$gens grpo.max_completion_length=$max_completion grpo.temperature=1.0 \
          grpo.top_p=1.0 grpo.top_k=0 grpo.beta=0.0 grpo.epsilon=0.2 grpo.epsilon_high=0.28 \
          grpo.num_iterations=1 grpo.loss_type=dapo grpo.scale_rewards=group "grpo.stop=[]" \
          grpo.mask_truncated_completions=false grpo.log_completions_every=0 \
          optimizer.lr=2e-4 optimizer.weight_decay=0.0 lr_scheduler.kind=constant \
          lr_scheduler.warmup_steps=0 clip_grad_norm=1.0 enable_activation_checkpointing=false \
          log_every_n_steps=1 save_adapter_weights_only=true merge_adapter=false resume_from_checkpoint=false \
          "${more[@]}" || bench_failed "$fw" "$dir"
        runs+=("grpo|afinar|afinar|$dir/out/metrics.jsonl|$dir/time.txt|$round") ;;
      trl)
        read -r -a trl_more <<< "${TRL_EXTRA:-}"
        timed "$dir/time.txt" "$dir/run.log" "$py" scripts/bench/trl_grpo.py "$work" --steps "$steps" \
          --prompts "$batch" --generations $gens --micro $micro --threads "$threads" \
          --max-completion $max_completion --data "$data" "${trl_more[@]}" || bench_failed "$fw" "$dir"
        runs+=("grpo|TRL GRPOTrainer + PEFT|hf|$dir/run.log|$dir/time.txt|$round") ;;
      *) echo "grpo: unknown framework $fw" >&2; exit 2 ;;
    esac
  done
done
echo "prompts per step: $batch (× $gens completions)"
python3 scripts/bench/finetune_report.py --tokens "$batch" --unit prompts --check completions/mean_length \
  "$batch" "$max_completion" "${runs[@]}" || fail=1
echo
echo "completion tokens trained on per step (EOS included), mean over the timed steps"
bench_report --unit "completion tokens" --check completions/mean_length "$batch" "$max_completion"
