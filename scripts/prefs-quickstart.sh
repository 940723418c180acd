#!/usr/bin/env bash
# Preference tuning, before and after, on the CPU: does SmolLM2-135M-Instruct learn to answer in
# the language of the question, briefly?
#  1. fetch SmolLM2-135M-Instruct and build afinar,
#  2. (re)generate the bilingual preference set data/prefs_bilingual/{train,heldout}.jsonl,
#  3. `afinar eval` the base model on the held-out pairs (preference accuracy and mean
#     log-probability margin, English and Spanish),
#  4. train with DPO LoRA on the train pairs,
#  5. `afinar eval` the result on the same held-out pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh >/dev/null
cargo build --release --locked -p afinar-cli
python3 scripts/make-preference-data.py
cache=${AFINAR_CACHE:-$HOME/.cache/afinar}
# The f32 Hugging Face folder the eval fixtures write, when it is there (the baseline in
# data/README.md was measured on it); else the GGUF.
f32="$cache/eval/smollm2-135m-instruct-f32"
if [[ -f "$f32/model.safetensors" ]]; then default_base=$f32; else
  default_base=$cache/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf; fi
base=${BASE_MODEL:-$default_base}
out=${OUT:-output/prefs-quickstart}
mkdir -p "$out"

echo "== base model: held-out preference accuracy"
./target/release/afinar eval --model "$base" --config data/prefs_bilingual/eval.yaml \
  --output "$out/eval-base.json"

echo "== DPO LoRA on the train pairs (sigmoid, beta 0.1): 45 steps of 4 pairs, ~10 minutes on 2 cores"
./target/release/afinar run dpo --config smollm2_135m_dpo_lora model.path="$base" \
  output_dir="$out/dpo" max_steps_per_epoch=45 optimizer.lr=1e-3 lr_scheduler.warmup_steps=3

echo "== after DPO: held-out preference accuracy"
./target/release/afinar eval --model "$out/dpo/epoch_0/merged" --config data/prefs_bilingual/eval.yaml \
  --output "$out/eval-dpo.json"
