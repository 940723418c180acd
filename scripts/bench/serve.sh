#!/usr/bin/env bash
# Serving speed: `afinar serve` against llama-cpp-python's server (`python -m llama_cpp.server`)
# on the same SmolLM2-135M-Instruct Q8_0 file (the assets' Q4_1 file re-quantized by llama.cpp's
# own quantizer, scripts/bench/requantize.py), 2 threads each, CLIENTS concurrent streaming chat
# clients (the official `openai` package, scripts/bench/serve_client.py), greedy, NEW_TOKENS per
# answer. The servers alternate: ROUNDS rounds of (afinar, llama.cpp), a fresh server process per
# round, so that a slow minute of this shared machine hits both alike. Prints the processor and
# the table: total tokens/s over all clients and p50/p99 time to first token.
#
#   scripts/bench/serve.sh
# Environment: ROUNDS (3), CLIENTS (8), NEW_TOKENS (64), THREADS (2), PARALLEL (afinar's
#   --parallel, default CLIENTS), QUANT_DIR (/tmp), AFINAR_BIN (skip the release build),
#   PY (a python with openai and llama_cpp[server]; default: the reference venv's, whose llama.cpp
#     is a portable AVX2 build; scripts/bench/peer-venv.sh builds one for this machine's AVX-512).
# llama-cpp-python's server decodes one request at a time (the others wait for its lock);
# --interrupt_requests False keeps a new request from cutting the stream in progress.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${ROUNDS:-3}
clients=${CLIENTS:-8}
new=${NEW_TOKENS:-64}
threads=${THREADS:-2}
parallel=${PARALLEL:-$clients}
quant_dir=${QUANT_DIR:-/tmp}
assets=$(./scripts/fetch-assets.sh)
q4_1=$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -z "${AFINAR_BIN:-}" ]; then
  cargo build --quiet --release -p afinar-cli >&2
  AFINAR_BIN=target/release/afinar
fi
py=${PY:-$(./scripts/reference-venv.sh)}
model=$quant_dir/SmolLM2-135M-Instruct.Q8_0.gguf
if [ ! -s "$model" ]; then
  echo "serve bench: re-quantizing $(basename "$q4_1") to $model" >&2
  "$py" scripts/bench/requantize.py "$q4_1" "$model" q8_0 > "$model.log" 2>&1 \
    || { cat "$model.log" >&2; rm -f "$model"; exit 1; }
fi
out=$(mktemp /tmp/serve-bench.XXXXXX.jsonl)
log=$(mktemp /tmp/serve-bench.XXXXXX.log)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; true; }
trap cleanup EXIT

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits (at most 120 s) until the server at port $1 lists its models.
wait_ready() {
  for _ in $(seq 240); do
    "$py" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$1/v1/models', timeout=2)" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "serve bench: the server died:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.5
  done
  echo "serve bench: the server did not come up:" >&2; cat "$log" >&2; exit 1
}
# Runs one round against the server started by "$@" and stops it.
round() {
  local label=$1; shift
  local port; port=$(free_port)
  "$@" --port "$port" > "$log" 2>&1 &
  pid=$!
  wait_ready "$port"
  "$py" scripts/bench/serve_client.py run "http://127.0.0.1:$port/v1" smollm2 "$label" "$out" \
    --clients "$clients" --max-tokens "$new"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

model_name=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p')
flags=$(lscpu | sed -n 's/^Flags://p')
has() { grep -qw "$1" <<< "$flags" && echo "$1" || echo "no $1"; }
echo "processor: $model_name ($(nproc) CPUs; $(has avx2), $(has avx512f), $(has avx512_vnni), $(has amx_int8))"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "start: $(date -u +%FT%TZ); $rounds rounds × $clients streaming clients, $new tokens each, $threads threads"
for r in $(seq "$rounds"); do
  round "afinar serve (--parallel $parallel)" "$AFINAR_BIN" serve --model "$model" --threads "$threads" \
    --served-model-name smollm2 --parallel "$parallel" --host 127.0.0.1
  round "llama-cpp-python server" "$py" -m llama_cpp.server --model "$model" --n_threads "$threads" \
    --n_ctx 4096 --model_alias smollm2 --interrupt_requests False --host 127.0.0.1
done
echo "end: $(date -u +%FT%TZ); load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" scripts/bench/serve_client.py report "$out"
