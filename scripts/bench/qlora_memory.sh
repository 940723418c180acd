#!/usr/bin/env bash
# QLoRA against LoRA: peak memory and loss curves on the same random model and data.
#
# Both runs fine-tune a randomly initialised model of a preset's shape (default smollm2-360m:
# 362M parameters, drawn from the same seed, so both start from the same f32 values) with LoRA
# rank 8 alpha 16 on every projection, batch 2 x 64 tokens of data/bilingual_instruct.jsonl in file
# order, AdamW lr 3e-4 constant after 5 warm-up steps, clipping 1.0, STEPS (50) steps, 2 threads:
#   lora   the frozen base in f32 (model.dtype fp32)
#   qlora  the same, with lora.quantize_base: true (projections NF4; embedding and norms f32)
# Peak RSS comes from /usr/bin/time -v; the losses from each run's metrics.jsonl. Prints both, the
# ratio of the peaks, and the largest relative difference between the two loss curves over the
# last 11 steps (40-50 by default). Exits non-zero if a run fails.
#
#   scripts/bench/qlora_memory.sh
# Environment: STEPS (50), THREADS (2), PRESET (smollm2-360m), SEQ (64), BATCH (2),
#   WORK (folder for configs, logs and outputs; default a temporary one, removed at the end),
#   AFINAR_BIN (skip `cargo build --release -p afinar-cli` and use this binary).
# The tokenizer is SmolLM2's, read from the test asset (scripts/fetch-assets.sh); a Llama preset
# needs TOKENIZER=path/to/llama3 tokenizer.json (its vocabulary must match the preset's).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${STEPS:-50}
threads=${THREADS:-2}
preset=${PRESET:-smollm2-360m}
seq=${SEQ:-64}
batch=${BATCH:-2}
assets=$(./scripts/fetch-assets.sh)
tokenizer=${TOKENIZER:-$assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
bench_afinar_bin
bench_workdir
data=$(pwd)/data/bilingual_instruct.jsonl

echo "qlora_memory: $preset random, $steps steps, batch $batch x $seq, $threads threads; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for mode in lora qlora; do
  quantize=false; [ "$mode" = qlora ] && quantize=true
  rm -rf "$work/$mode"; mkdir -p "$work/$mode"
  cat > "$work/$mode.yaml" <<YAML
# qlora_memory.sh: $mode run
recipe: lora_finetune
output_dir: $work/$mode/out
model:
  preset: $preset
  dtype: fp32
tokenizer:
  path: $tokenizer
  max_seq_len: $seq
lora:
  rank: 8
  alpha: 16
  dropout: 0.0
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
  quantize_base: $quantize
dataset:
  kind: instruct
  source: $data
  train_on: all
seed: 0
shuffle: false
batch_size: $batch
epochs: 1
max_steps_per_epoch: $steps
optimizer:
  lr: 3e-4
  weight_decay: 0.0
lr_scheduler:
  kind: constant
  warmup_steps: 5
clip_grad_norm: 1.0
device: cpu
threads: $threads
save_adapter_weights_only: true
merge_adapter: false
log_every_n_steps: 1
YAML
  t0=$(date +%s)
  if ! /usr/bin/time -v -o "$work/$mode.time" "$AFINAR_BIN" run lora_finetune --config "$work/$mode.yaml" \
      > "$work/$mode.log" 2>&1; then
    echo "$mode run failed:" >&2; tail -20 "$work/$mode.log" >&2; exit 1
  fi
  echo "$mode: $(( $(date +%s) - t0 )) s" >&2
done

python3 - "$work" "$steps" <<'PY'
import json, re, sys
work, steps = sys.argv[1], int(sys.argv[2])
def peak_kb(mode):
    text = open(f"{work}/{mode}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
def losses(mode):
    out = {}
    for line in open(f"{work}/{mode}/out/metrics.jsonl"):
        m = json.loads(line)
        if "loss" in m and "step" in m:
            out[m["step"]] = m["loss"]
    return out
pk = {m: peak_kb(m) for m in ("lora", "qlora")}
ls = {m: losses(m) for m in ("lora", "qlora")}
for m in ("lora", "qlora"):
    note = [l for l in open(f"{work}/{m}.log") if "QLoRA:" in l]
    print(f"{m:6s} peak RSS {pk[m] / 1024:8.1f} MiB   steps {len(ls[m])}" + (f"   {note[0].strip()}" if note else ""))
ratio = pk["qlora"] / pk["lora"]
print(f"peak RSS ratio qlora / lora: {ratio:.3f}")
lo = max(1, steps - 10)
diffs = [abs(ls["qlora"][s] - ls["lora"][s]) / abs(ls["lora"][s]) for s in range(lo, steps + 1)]
print(f"loss at steps {lo}..{steps}:")
for s in range(lo, steps + 1):
    print(f"  step {s:3d}  lora {ls['lora'][s]:.4f}  qlora {ls['qlora'][s]:.4f}")
print(f"max relative loss difference over steps {lo}-{steps}: {max(diffs) * 100:.2f} %")
print(f"first step: lora {ls['lora'][1]:.4f}  qlora {ls['qlora'][1]:.4f}")
PY
