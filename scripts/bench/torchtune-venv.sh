#!/usr/bin/env bash
# Creates the torchtune venv used by scripts/bench/finetune.sh: torchtune 0.6.1 (its last release)
# needs torch 2.7.1 and torchao 0.11.0 (newer torchao dropped names it imports), so it cannot share
# the reference venv (torch 2.15). Outside git: ~/.cache/afinar/venv-torchtune (or
# $AFINAR_CACHE/venv-torchtune); downloads about 3 GB from PyPI (the default Linux torch wheel is
# the CUDA build; it runs on the CPU). Idempotent. Prints the venv's python path.
set -euo pipefail
venv="${AFINAR_CACHE:-$HOME/.cache/afinar}/venv-torchtune"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torchtune, torchao, safetensors, psutil' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet torch==2.7.1 torchao==0.11.0 torchtune==0.6.1 \
    safetensors psutil numpy >&2
fi
echo "$venv/bin/python"
