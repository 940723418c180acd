#!/usr/bin/env bash
# Generation speed: afinar (native GGUF blocks, or f32 / bf16 weights) against llama.cpp
# (llama-cpp-python) on the same SmolLM2-135M-Instruct GGUF files, 2 threads, greedy, 128 new
# tokens, two prompts: "long" (an English paragraph repeated to ~500 tokens, so prompt tokens/s
# means something) and "short" (the start of a story, 25 tokens). Both are plain text (no chat
# template), so greedy decoding runs the full 128 tokens.
#
# The engines alternate: for each file and prompt, REPEATS rounds of (afinar, llama.cpp), one
# process per run, so that a slow minute of this shared machine hits both engines alike. The table
# gives the median tokens/s of each engine, the ratio of the medians, and the min–max of the
# per-round ratios (afinar / llama.cpp of the same round). Per-round numbers go to stderr.
# Exits non-zero if a run fails.
#
#   scripts/bench/generate.sh
#   FILES="q8_0 q4_0 q4_1" REPEATS=3 scripts/bench/generate.sh
# Environment: THREADS (2), NEW_TOKENS (128), REPEATS (3), PROMPTS ("long short"),
#   FILES (GGUF paths, or the type names q8_0 / q4_0 / q4_1: q4_1 is the assets' Q4_1 file, the
#     others that file re-quantized by llama.cpp's own quantizer (scripts/bench/requantize.py)
#     into QUANT_DIR (/tmp), made on first use; default: MODEL, else q4_1),
#   AFINAR_BIN (skip `cargo build --release -p afinar-cli` and use this binary),
#   AFINAR_ARGS (extra `afinar generate` arguments, e.g. "--kv-cache f32"),
#   SKIP_LLAMACPP=1 (afinar only), DTYPES (afinar's --dtype values to run, "native").
# Measure on an idle machine: llama.cpp's OpenMP threads spin at barriers and collapse under load.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-2}
new=${NEW_TOKENS:-128}
repeats=${REPEATS:-3}
quant_dir=${QUANT_DIR:-/tmp}
assets=$(./scripts/fetch-assets.sh)
q4_1=$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -z "${AFINAR_BIN:-}" ]; then
  cargo build --quiet --release -p afinar-cli >&2
  AFINAR_BIN=target/release/afinar
fi
py=""
[ "${SKIP_LLAMACPP:-0}" = 1 ] || py=$(./scripts/bench/peer-venv.sh)

# Resolve FILES to paths.
files=()
for f in ${FILES:-${MODEL:-q4_1}}; do
  case "$f" in
    q4_1) files+=("$q4_1") ;;
    q8_0 | q4_0)
      out=$quant_dir/SmolLM2-135M-Instruct.${f^^}.gguf
      if [ ! -s "$out" ]; then
        qpy=${py:-$(./scripts/bench/peer-venv.sh)}
        echo "generate: re-quantizing $(basename "$q4_1") to $out" >&2
        "$qpy" scripts/bench/requantize.py "$q4_1" "$out" "$f" > "$out.log" 2>&1 \
          || { cat "$out.log" >&2; rm -f "$out"; exit 1; }
      fi
      files+=("$out")
      ;;
    *)
      [ -f "$f" ] || { echo "generate: no such file: $f" >&2; exit 2; }
      files+=("$f")
      ;;
  esac
done

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

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "generate: ${#files[@]} file(s), $threads threads, greedy, $new new tokens, $repeats interleaved rounds; $(date -u +%FT%TZ), load $(load)" >&2
results="$work/results.tsv"   # file prompt round engine prompt_tokens prompt_tps gen_tokens gen_tps
fail=0
for model in "${files[@]}"; do
  name=$(basename "$model" .gguf)
  for prompt in ${PROMPTS:-long short}; do
    for r in $(seq "$repeats"); do
      for dtype in ${DTYPES:-native}; do
        # shellcheck disable=SC2086 # AFINAR_ARGS is a list of arguments
        if ! "$AFINAR_BIN" generate --model "$model" --prompt-file "$work/$prompt.txt" --threads "$threads" \
            --dtype "$dtype" --temperature 0 --max-new-tokens "$new" ${AFINAR_ARGS:-} \
            > "$work/out.txt" 2> "$work/err.txt"; then
          echo "generate: afinar $dtype, $name, $prompt prompt failed:" >&2; cat "$work/err.txt" >&2; fail=1; continue
        fi
        line=$(grep '^afinar: prompt ' "$work/err.txt" | tail -1)
        # afinar: prompt N tokens at X tokens/s; generated M tokens at Y tokens/s (Stop)
        read -r np p ng g < <(sed -E 's/^afinar: prompt ([0-9]+) tokens at ([0-9.]+) tokens\/s; generated ([0-9]+) tokens at ([0-9.]+) tokens\/s.*/\1 \2 \3 \4/' <<< "$line")
        [ "$ng" = "$new" ] || echo "generate: warning: afinar $dtype stopped after $ng tokens ($line)" >&2
        printf '%s\t%s\t%s\tafinar %s\t%s\t%s\t%s\t%s\n' "$name" "$prompt" "$r" "$dtype" "$np" "$p" "$ng" "$g" >> "$results"
        echo "generate: $name $prompt round $r: afinar $dtype $g tokens/s (load $(load))" >&2
      done
      [ -n "$py" ] || continue
      if ! "$py" scripts/bench/llamacpp_generate.py "$model" "$work/$prompt.txt" --new "$new" \
          --threads "$threads" --repeats 1 > "$work/llama.jsonl" 2> "$work/err.txt"; then
        echo "generate: llama.cpp, $name, $prompt prompt failed:" >&2; cat "$work/err.txt" >&2; fail=1; continue
      fi
      python3 - "$work/llama.jsonl" "$name" "$prompt" "$r" >> "$results" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
f, p, rnd = sys.argv[2:5]
print(f"{f}\t{p}\t{rnd}\tllama.cpp\t{r['prompt_tokens']}\t{r['prompt_tps']}\t{r['generated_tokens']}\t{r['gen_tps']}")
PY
      printf 'generate: %s %s round %s: llama.cpp %.1f tokens/s (load %s)\n' "$name" "$prompt" "$r" \
        "$(tail -1 "$results" | cut -f8)" "$(load)" >&2
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
runs = defaultdict(dict)  # (file, prompt, engine) -> round -> row
order = []
for r in rows:
    key = (r[0], r[1], r[3])
    if key not in runs:
        order.append(key)
    runs[key][r[2]] = r
def med(key, i):
    return statistics.median(float(r[i]) for r in runs[key].values())
print("| file | prompt (tokens) | engine | rounds | prompt tok/s (median) | vs llama.cpp | "
      "gen tok/s (median) | vs llama.cpp (ratio of medians) | per-round gen ratio (min–max) |")
print("|---|---|---|---:|---:|---:|---:|---:|---|")
for key in order:
    f, p, e = key
    ref = (f, p, "llama.cpp")
    one = next(iter(runs[key].values()))
    pm, gm = med(key, 5), med(key, 7)
    if e != "llama.cpp" and ref in runs:
        pr = f"{pm / med(ref, 5):.2f}"
        gr = f"{gm / med(ref, 7):.2f}"
        per = [float(x[7]) / float(runs[ref][rnd][7]) for rnd, x in runs[key].items() if rnd in runs[ref]]
        rng = f"{min(per):.2f}–{max(per):.2f}" if per else "—"
    else:
        pr = gr = rng = "—"
    print(f"| {f} | {p} ({one[4]}) | {e} | {len(runs[key])} | {pm:.1f} | {pr} | {gm:.1f} | {gr} | {rng} |")
PY
echo "generate: done $(date -u +%FT%TZ), load after: $(load)" >&2
exit $fail
