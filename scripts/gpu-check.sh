#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: finds the CUDA libraries, runs every GPU test (each kernel of
# the CUDA backend against the CPU backend), then the GPU fine-tuning benchmark against HF
# transformers + PEFT, and the CPU-vs-GPU loss check, and prints one summary table.
#
#   ./scripts/gpu-check.sh                 # builds afinar and the GPU tests with --features cuda
#   AFINAR_BIN=… CUDA_TESTS=… ./scripts/gpu-check.sh   # prebuilt binaries (e.g. carried to a GPU box)
#
# Phases (PHASES, default "tests bench peer losses infer"): tests = every kernel against the CPU backend;
# bench = afinar LoRA and full fine-tuning, Llama-3.2-1B shape, batch 4 × 2048; profile = the same
# runs with AFINAR_CUDA_PROFILE=1 (time per backend call); bench8b = afinar LoRA of a
# Llama-3.1-8B shape, batch 2 × 2048, activation checkpointing; peer = HF transformers + PEFT on
# the same work (PEER_COMPILE=1: under torch.compile; PEER_8B=1: also the 8B run); losses = the
# first 20 losses of LoRA, QLoRA and full fine-tuning on the CPU and the CUDA backend;
# infer = `afinar generate` and `afinar eval --perplexity` on a random SmolLM2-shaped model, CPU
# backend against CUDA backend (same greedy tokens, same perplexity) with their speeds.
# Other knobs: STEPS (timed steps, default 5, after 2 warm-up), MODES ("lora full"), TOKENIZER (a
# Llama-3 tokenizer.json; default: the test asset), OUT (folder for logs).
set -uo pipefail
cd "$(dirname "$0")/.."
phases=${PHASES:-tests bench peer losses infer}
steps=${STEPS:-5}
warm=2
modes=${MODES:-lora full}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"

# CUDA libraries: system CUDA, the driver's folder, and the nvidia-* Python wheels.
libdirs=(/usr/local/nvidia/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
for d in /usr/local/lib/python3*/dist-packages/nvidia/*/lib /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib \
         /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib; do
  [ -d "$d" ] && libdirs+=("$d")
done
# Only afinar's processes get them (a global LD_LIBRARY_PATH can hand Python another libpython).
cuda_ld=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
gpu() { LD_LIBRARY_PATH="$cuda_ld" "$@"; }
[ -d /usr/local/cuda ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export AFINAR_CACHE=${AFINAR_CACHE:-$out/cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'

if [ -z "${AFINAR_BIN:-}" ] || [ -z "${CUDA_TESTS:-}" ]; then
  cargo build --release --quiet -p afinar-cli --features cuda
  AFINAR_BIN=target/release/afinar
  CUDA_TESTS=$(cargo test --release --quiet -p afinar-engine --features cuda --test cuda --no-run 2>&1 |
    grep -o 'target/release/deps/cuda-[0-9a-f]*' | head -1)
fi
TOKENIZER=${TOKENIZER:-$(./scripts/fetch-assets.sh)/llama3-tokenizer/tokenizer.json}
py=${PYTHON:-python3}
summary=()
row() { summary+=("$(printf '%-34s %s' "$1" "$2")"); }

has() { case " $phases " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if has tests; then
  echo "== GPU tests: every kernel against the CPU backend"
  if gpu "$CUDA_TESTS" --test-threads 1 --nocapture 2>&1 | tee "$out/tests.log"; then
    row "kernels vs CPU backend" "pass ($(grep -c ' ok$' "$out/tests.log") checks)"
  else
    row "kernels vs CPU backend" "FAIL: $(grep -c 'FAIL$' "$out/tests.log") checks (see tests.log)"
  fi
fi

# Text documents long enough to fill every row: random words (content does not change the work).
data=$out/docs.jsonl
"$py" - "$data" <<'EOF'
import json, random, sys
random.seed(0)
syll = ["ka", "lo", "mi", "sen", "ta", "ri", "do", "ver", "pa", "nu", "el", "sol", "mar", "de", "la", "que"]
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        words = ["".join(random.choice(syll) for _ in range(random.randint(1, 3))) for _ in range(4000)]
        f.write(json.dumps({"text": " ".join(words)}) + "\n")
EOF

afinar_run() { # mode batch seq steps device tag extra... → metrics in $out/afinar_<tag>/out
  local mode=$1 batch=$2 seq=$3 n=$4 device=$5 tag=$6; shift 6
  local recipe=${mode}_finetune config=${CONFIG:-llama3_2_1b}_$mode preset=${PRESET:-llama3.2-1b}
  [ "$mode" = qlora ] && recipe=lora_finetune
  local dir=$out/afinar_$tag
  rm -rf "$dir"; mkdir -p "$dir"
  local extra=()
  case $mode in
    lora|qlora) extra+=(lora.rank=64 lora.alpha=128 lora.dropout=0.0
      "lora.target_modules=[q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
      save_adapter_weights_only=true merge_adapter=false) ;;
  esac
  gpu "$AFINAR_BIN" run "$recipe" --config "$config" output_dir="$dir/out" '~model.path' model.preset="$preset" \
    tokenizer.path="$TOKENIZER" tokenizer.max_seq_len="$seq" device="$device" \
    dataset.kind=text dataset.source="$data" dataset.packed=false '~dataset.train_on' \
    batch_size="$batch" epochs=1 max_steps_per_epoch="$n" gradient_accumulation_steps=1 shuffle=false seed=0 \
    optimizer.lr=3e-4 optimizer.weight_decay=0.01 clip_grad_norm=1.0 lr_scheduler.warmup_steps=0 \
    log_every_n_steps=1 "${extra[@]}" "$@" > "$dir/run.log" 2>&1
}

metric() { # metrics.jsonl → "tokens/s peak_GiB" over steps after the warm-up
  "$py" - "$1" "$warm" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
timed = [r for r in rows if r["step"] > int(sys.argv[2])] or rows
tps = sum(r["label_tokens"] for r in timed) / sum(r["label_tokens"] / r["tokens_per_sec"] for r in timed)
print(f"{tps:.0f} {rows[-1].get('peak_device_mb', 0) / 1024 * 1e6 / 2**20:.1f}")
EOF
}

if has bench; then
  for mode in $modes; do
    echo "== afinar $mode, Llama-3.2-1B shape, batch 4 × 2048, bf16"
    ckpt=()
    [ "$mode" = full ] && ckpt=(model.dtype=fp32)
    if afinar_run "$mode" 4 2048 $((steps + warm)) cuda "bench_$mode" model.dtype=bf16 "${ckpt[@]}" \
        enable_activation_checkpointing=false; then
      read -r tps gib < <(metric "$out/afinar_bench_$mode/out/metrics.jsonl")
      row "afinar $mode 1B b4×2048" "$tps tok/s, $gib GiB peak"
    else
      tail -5 "$out/afinar_bench_$mode/run.log"; row "afinar $mode 1B b4×2048" "FAILED (see run.log)"
    fi
  done
fi

if has profile; then
  for mode in $modes; do
    echo "== afinar $mode with AFINAR_CUDA_PROFILE=1 (3 steps; time per backend call)"
    dt=bf16
    [ "$mode" = full ] && dt=fp32
    AFINAR_CUDA_PROFILE=1 afinar_run "$mode" 4 2048 3 cuda "profile_$mode" model.dtype=$dt \
      enable_activation_checkpointing=false || true
    sed -n '/CUDA profile/,$p' "$out/afinar_profile_$mode/run.log" | head -32 | tee "$out/profile_$mode.txt"
  done
fi

if has bench8b; then
  echo "== afinar lora, Llama-3.1-8B shape, batch 2 × 2048, bf16, activation checkpointing"
  if CONFIG=llama3_1_8b PRESET=llama3.1-8b afinar_run lora 2 2048 $((steps + warm)) cuda bench8b_lora \
      model.dtype=bf16 enable_activation_checkpointing=true; then
    read -r tps gib < <(metric "$out/afinar_bench8b_lora/out/metrics.jsonl")
    row "afinar lora 8B b2×2048 ckpt" "$tps tok/s, $gib GiB peak"
  else
    tail -5 "$out/afinar_bench8b_lora/run.log"; row "afinar lora 8B b2×2048 ckpt" "FAILED (see run.log)"
  fi
fi

peer_rows() { # jsonl → summary rows
  while read -r line; do
    row "$(echo "$line" | "$py" -c 'import json,sys; r=json.load(sys.stdin); print(r["framework"], r["mode"], r["shape"])')" \
      "$(echo "$line" | "$py" -c 'import json,sys; r=json.load(sys.stdin); print("%.0f tok/s, %.1f GiB peak" % (r["tokens_per_sec"], r["peak_gib"]))')"
  done < "$1"
}

if has peer; then
  echo "== HF transformers + PEFT (sdpa), same shapes"
  runs=("--modes|$modes")
  [ "${PEER_8B:-0}" = 1 ] && runs+=("--modes|lora|--shape|8b|--batch|2|--checkpointing")
  [ "${PEER_COMPILE:-0}" = 1 ] && runs+=("--modes|lora|--compile")
  : > "$out/peer.jsonl"
  for r in "${runs[@]}"; do
    IFS='|' read -r -a args <<< "$r"
    PYTHONUNBUFFERED=1 "$py" scripts/bench/gpu_peer.py "${args[@]}" --steps "$steps" --warmup "$warm" \
      2>>"$out/peer.err" | tee -a "$out/peer.jsonl"
  done
  peer_rows "$out/peer.jsonl"
  [ -s "$out/peer.jsonl" ] || { tail -5 "$out/peer.err"; row "hf+peft" "FAILED (see peer.err)"; }
fi

if has losses; then
  echo "== first 20 losses, CPU backend vs CUDA backend (1B shape, batch 1 × 64)"
  for mode in lora qlora full; do
    extra=(model.dtype=bf16)
    [ "$mode" = full ] && extra=(model.dtype=fp32)
    [ "$mode" = qlora ] && extra+=(lora.quantize_base=true)
    afinar_run "$mode" 1 64 20 cpu "loss_cpu_$mode" "${extra[@]}" threads=16 &&
      afinar_run "$mode" 1 64 20 cuda "loss_gpu_$mode" "${extra[@]}" || true
    res=$("$py" - "$out/afinar_loss_cpu_$mode/out/metrics.jsonl" "$out/afinar_loss_gpu_$mode/out/metrics.jsonl" <<'EOF' 2>&1
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
n = min(len(a), len(b))
worst = max(abs(x - y) / abs(x) for x, y in zip(a[:n], b[:n]))
print(f"{n} steps, worst relative difference {worst:.2e} (cpu {a[0]:.4f}→{a[n-1]:.4f}, gpu {b[0]:.4f}→{b[n-1]:.4f})")
EOF
)
    row "losses cpu vs gpu $mode" "$res"
  done
fi

if has infer; then
  echo "== generation and perplexity, CPU backend vs CUDA backend (random SmolLM2-shaped model, f32 weights)"
  model=$out/random_smollm2
  "$py" scripts/bench/gpu_random_model.py "$TOKENIZER" "$model" > /dev/null 2> "$out/random_model.err" ||
    tail -3 "$out/random_model.err"
  for dev in cpu cuda; do
    gpu "$AFINAR_BIN" generate --model "$model" --prompt "Hola, ¿cómo estás? Hello" --max-new-tokens 48 \
      --dtype f32 --device "$dev" > "$out/gen_$dev.txt" 2> "$out/gen_$dev.err"
    gpu "$AFINAR_BIN" eval --model "$model" --perplexity "es=data/eval/text_es.txt" --dtype f32 --device "$dev" \
      --output "$out/ppl_$dev.json" > /dev/null 2> "$out/ppl_$dev.err"
  done
  res=$("$py" - "$out" <<'EOF'
import json, pathlib, re, sys
o = pathlib.Path(sys.argv[1])
def rate(dev):
    m = re.search(r"generated (\d+) tokens at ([\d.]+) tokens/s", (o / f"gen_{dev}.err").read_text())
    return f"{m.group(2)} tok/s" if m else "failed"
same = (o / "gen_cpu.txt").read_text() == (o / "gen_cuda.txt").read_text()
def ppl(dev):
    try:
        r = json.loads((o / f"ppl_{dev}.json").read_text())
        return r["tasks"][0]["result"]["perplexity"]
    except Exception:
        return float("nan")
a, b = ppl("cpu"), ppl("cuda")
print(f"greedy text {'identical' if same else 'DIFFERS'}; decode cpu {rate('cpu')}, cuda {rate('cuda')}; "
      f"perplexity cpu {a:.4f} cuda {b:.4f} (rel {abs(a - b) / a:.1e})")
EOF
)
  row "generate/eval cpu vs cuda" "$res"
fi

echo
echo "== summary ($(date -u +%FT%TZ))"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
