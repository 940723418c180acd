#!/usr/bin/env bash
# GRPO, before and after, on the CPU: does SmolLM2-135M-Instruct get better at short arithmetic
# questions in English and Spanish, answered with a final "Answer: N" / "Respuesta: N" line?
#  1. fetch SmolLM2-135M-Instruct and build afinar,
#  2. (re)generate the task data/grpo_arith/{train,heldout}.jsonl,
#  3. `afinar eval` the base model on the held-out prompts (mean reward, English and Spanish;
#     greedy answers scored by the shipped config's rewards: correct 0.7, answer line 0.2,
#     language 0.1),
#  4. train with the shipped `smollm2_135m_grpo_lora` config (STEPS steps of 4 prompts × 8
#     completions; `time` prints how long),
#  5. `afinar eval` the result on the same held-out prompts.
# STEPS (default 60), BASE_MODEL and OUT can be set; extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh >/dev/null
cargo build --release --locked -p afinar-cli
python3 scripts/make-grpo-data.py
cache=${AFINAR_CACHE:-$HOME/.cache/afinar}
base=${BASE_MODEL:-$cache/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
out=${OUT:-output/grpo-quickstart}
steps=${STEPS:-60}
bin=${AFINAR_BIN:-./target/release/afinar}
mkdir -p "$out"

echo "== base model: held-out mean reward"
"$bin" eval --model "$base" --config data/grpo_arith/eval.yaml --output "$out/eval-base.json"

echo "== GRPO LoRA: $steps steps of 4 prompts x 8 completions"
time "$bin" run grpo --config smollm2_135m_grpo_lora model.path="$base" output_dir="$out/grpo" \
  max_steps_per_epoch="$steps" save_every_n_steps="$steps" "$@"

echo "== after GRPO: held-out mean reward"
"$bin" eval --model "$out/grpo/epoch_0/merged" --config data/grpo_arith/eval.yaml \
  --output "$out/eval-grpo.json"
