#!/usr/bin/env bash
# Creates (when missing) the Python venv with the reference implementations that write test
# fixtures, run the interop checks in the test suite (`AFINAR_PYTHON`) and run benchmarks:
# torch, transformers, PEFT, bitsandbytes, gguf, tokenizers, lm-eval, llama.cpp's Python bindings
# (with its OpenAI-compatible server), the official `openai` client, huggingface_hub and
# tensorboard; and torchtune 0.6.1 without its dependencies, whose loss modules (torch only) the
# knowledge-distillation fixture script loads by path (scripts/fixtures/kd_torchtune.py).
# Outside git: $AFINAR_VENV, default ~/.cache/afinar/venv (not under $AFINAR_CACHE, so a
# temporary asset cache, as in .ci/run, does not start a second ~25-minute install).
# Idempotent: a venv that imports everything is kept. Prints the venv's python path.
#
# A fresh install takes ~6 minutes for the wheels plus ~15-20 minutes to compile llama-cpp-python
# on 2 cores. Its build here is portable x86-64 with AVX2/FMA/F16C (GGML_NATIVE off), so the same
# venv runs on any of the project's machines; `scripts/bench/peer-venv.sh` rebuilds it for the
# machine's widest vector units when benchmarking.
set -euo pipefail
venv="${AFINAR_VENV:-$HOME/.cache/afinar/venv}"
py="$venv/bin/python"
imports='import torch, transformers, gguf, peft, lm_eval, bitsandbytes, openai, huggingface_hub, tensorboard, trl, llama_cpp, llama_cpp.server.app'
# Not imported: the torchtune package's __init__ needs torchao and torchdata, which the venv lacks.
torchtune_check='import importlib.metadata as m, sys; sys.exit(m.version("torchtune") != "0.6.1")'
if [ -x "$py" ] && "$py" -c "$imports" 2>/dev/null && "$py" -c "$torchtune_check" 2>/dev/null; then
  echo "$py"
  exit 0
fi
echo "reference-venv: creating or completing $venv" >&2
[ -x "$py" ] || python3 -m venv "$venv"
"$py" -m pip install --quiet --upgrade pip >&2
"$py" -m pip install --quiet torch==2.15.0 transformers==5.23.0 gguf==0.19.0 \
  tokenizers==0.23.3 safetensors==0.8.0 numpy tiktoken==0.14.0 sentencepiece protobuf \
  accelerate==1.15.0 peft==0.21.2 lm-eval==0.4.13 bitsandbytes==0.50.2 \
  openai==3.63.0 tensorboard==2.21.0 trl==1.16.0 >&2
if ! "$py" -c 'import llama_cpp' 2>/dev/null; then
  echo "reference-venv: compiling llama-cpp-python 0.3.36 (portable AVX2 build, ~15-20 minutes)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 "$py" -m pip install --quiet --no-cache-dir 'llama-cpp-python==0.3.36' >&2
fi
"$py" -m pip install --quiet 'llama-cpp-python[server]==0.3.36' >&2
"$py" -m pip install --quiet --no-deps torchtune==0.6.1 >&2
"$py" -c "$imports" >&2
"$py" -c "$torchtune_check" >&2
echo "$py"
