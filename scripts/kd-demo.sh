#!/usr/bin/env bash
# Knowledge distillation's effect on what this machine has (SmolLM2-360M is not needed): a teacher
# is SmolLM2-135M-Instruct fully fine-tuned for 20 steps on the first 200 rows of
# data/bilingual_instruct.jsonl; the student, the base SmolLM2-135M-Instruct with LoRA, learns
# from that teacher alone (kd_ratio=1: it never sees a label) on the same rows; then `afinar eval`
# measures the perplexity of the base model, the teacher and the distilled student on the 40
# held-out rows. The student's perplexity should move from the base's toward the teacher's.
# CPU only, a few minutes on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh >/dev/null
cargo build --release --locked -p afinar-cli
afinar=./target/release/afinar
out=${OUT:-output/kd-demo}
mkdir -p "$out"
python3 - "$out/heldout.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open("data/bilingual_instruct.jsonl")][200:]
open(sys.argv[1], "w").write("\n\n".join(r["instruction"] + "\n" + r["output"] for r in rows))
PY
common=(dataset.max_rows=200 tokenizer.max_seq_len=128 max_steps_per_epoch=20 epochs=1 log_every_n_steps=5)
$afinar run full_finetune --config smollm2_135m_full output_dir="$out/teacher" optimizer.lr=1e-4 \
  lr_scheduler.warmup_steps=2 "${common[@]}"
$afinar run knowledge_distillation --config smollm2_360m_to_135m_kd_lora output_dir="$out/student" \
  teacher.path="$out/teacher/epoch_0" teacher.dtype=bf16 kd_ratio=1.0 "${common[@]}"
base=${AFINAR_CACHE:-$HOME/.cache/afinar}/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
for m in "$base" "$out/teacher/epoch_0" "$out/student/epoch_0/merged"; do
  echo "== $m"
  $afinar eval --model "$m" --perplexity "$out/heldout.txt"
done
