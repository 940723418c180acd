#!/usr/bin/env bash
# Creates the Python venv with the reference implementations used to write test fixtures and run
# benchmarks (torch, transformers, gguf, tokenizers). Outside git: ~/.cache/afinar/venv (or
# $AFINAR_CACHE/venv). Tests never need it: fixtures are committed under tests/fixtures.
# Prints the venv's python path.
set -euo pipefail
venv="${AFINAR_CACHE:-$HOME/.cache/afinar}/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, transformers, gguf, peft, lm_eval, bitsandbytes' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet torch==2.15.0 transformers==5.23.0 gguf==0.19.0 \
    tokenizers==0.23.3 safetensors==0.8.0 numpy tiktoken==0.14.0 sentencepiece protobuf accelerate==1.15.0 peft==0.21.2 \
    lm-eval==0.4.13 bitsandbytes==0.50.2 >&2
fi
echo "$venv/bin/python"
