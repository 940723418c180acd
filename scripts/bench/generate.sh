#!/usr/bin/env bash
# Generation speed: afinar (native GGUF blocks, f32 and bf16 weights) against llama.cpp (llama-cpp-python) on the
# same SmolLM2-135M-Instruct GGUF (the Q4_1 file of the assets, or MODEL), 2 threads, greedy, 128 new tokens, two prompts:
# "long" (an English paragraph repeated to ~500 tokens, so prompt tokens/s means something) and
# "short" (the start of a story, 25 tokens). Both are plain text (no chat template), so greedy
# decoding runs the full 128 tokens. Each run is done twice and the better number of each kind kept.
# Prints a table with afinar/llama.cpp ratios; exits non-zero if a run fails.
#
#   scripts/bench/generate.sh
# Environment: THREADS (2), NEW_TOKENS (128), REPEATS (2), MODEL (the GGUF),
#   AFINAR_BIN (skip `cargo build --release -p afinar-cli` and use this binary),
#   SKIP_LLAMACPP=1 (afinar only), DTYPES (afinar's --dtype values to run, "native f32 bf16").
# Q8_0 / Q4_0 files of the same model: scripts/bench/requantize.py (llama.cpp's own quantizer).
# Measure on an idle machine: llama.cpp's OpenMP threads spin at barriers and collapse under load.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-2}
new=${NEW_TOKENS:-128}
repeats=${REPEATS:-2}
assets=$(./scripts/fetch-assets.sh)
model=${MODEL:-$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -z "${AFINAR_BIN:-}" ]; then
  cargo build --quiet --release -p afinar-cli >&2
  AFINAR_BIN=target/release/afinar
fi
py=""
[ "${SKIP_LLAMACPP:-0}" = 1 ] || py=$(./scripts/bench/peer-venv.sh)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
paragraph="The old lighthouse stood at the edge of the cliff, where the wind never stopped and the sea \
was always grey. Every evening the keeper climbed the narrow stairs, cleaned the great lens, and lit \
the lamp that warned the fishing boats away from the rocks below. He kept a logbook of every ship \
he saw, the weather of each day, and the birds that rested on the railing during storms."
: > "$work/long.txt"
for _ in 1 2 3 4 5 6; do printf '%s\n\n' "$paragraph" >> "$work/long.txt"; done
printf '%s' "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper named \
Tom. Every morning he" > "$work/short.txt"

echo "generate: $(basename "$model"), $threads threads, greedy, $new new tokens, best of $repeats; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
results="$work/results.tsv"   # prompt engine prompt_tokens prompt_tps gen_tokens gen_tps
fail=0
for prompt in long short; do
  for dtype in ${DTYPES:-native f32 bf16}; do
    echo "generate: afinar $dtype, $prompt prompt (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    best_p=0; best_g=0; np=0; ng=0
    for r in $(seq "$repeats"); do
      if ! "$AFINAR_BIN" generate --model "$model" --prompt-file "$work/$prompt.txt" --threads "$threads" \
          --dtype "$dtype" --temperature 0 --max-new-tokens "$new" > "$work/out.txt" 2> "$work/err.txt"; then
        echo "generate: afinar $dtype on the $prompt prompt failed:" >&2; cat "$work/err.txt" >&2; fail=1; continue
      fi
      line=$(grep '^afinar: prompt ' "$work/err.txt" | tail -1)
      # afinar: prompt N tokens at X tokens/s; generated M tokens at Y tokens/s (Stop)
      read -r np p ng g < <(sed -E 's/^afinar: prompt ([0-9]+) tokens at ([0-9.]+) tokens\/s; generated ([0-9]+) tokens at ([0-9.]+) tokens\/s.*/\1 \2 \3 \4/' <<< "$line")
      [ "$ng" = "$new" ] || echo "generate: warning: afinar $dtype stopped after $ng tokens ($line)" >&2
      best_p=$(python3 -c "print(max($best_p, $p))"); best_g=$(python3 -c "print(max($best_g, $g))")
    done
    printf '%s\tafinar %s\t%s\t%s\t%s\t%s\n' "$prompt" "$dtype" "$np" "$best_p" "$ng" "$best_g" >> "$results"
  done
  if [ -n "$py" ]; then
    echo "generate: llama.cpp, $prompt prompt (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    if ! "$py" scripts/bench/llamacpp_generate.py "$model" "$work/$prompt.txt" --new "$new" \
        --threads "$threads" --repeats "$repeats" > "$work/llama.jsonl" 2> "$work/err.txt"; then
      echo "generate: llama.cpp on the $prompt prompt failed:" >&2; cat "$work/err.txt" >&2; fail=1; continue
    fi
    python3 - "$work/llama.jsonl" "$prompt" "$(basename "$model")" >> "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = lambda k: max(r[k] for r in rows)
r = rows[0]
print(f"{sys.argv[2]}\tllama.cpp ({sys.argv[3]})\t{r['prompt_tokens']}\t{best('prompt_tps')}\t{r['generated_tokens']}\t{best('gen_tps')}")
PY
  fi
done

python3 - "$results" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
ref = {r[0]: r for r in rows if r[1].startswith("llama.cpp")}
def ratio(r, i):
    b = ref.get(r[0])
    return f"{float(r[i]) / float(b[i]):.2f}" if b and float(b[i]) > 0 else "—"
print("| prompt | engine | prompt tokens | prompt tokens/s | vs llama.cpp | new tokens | generation tokens/s | vs llama.cpp |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {float(r[3]):.1f} | {ratio(r, 3)} | {r[4]} | {float(r[5]):.1f} | {ratio(r, 5)} |")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit $fail
