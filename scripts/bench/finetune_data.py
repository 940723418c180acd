"""Inputs of scripts/bench/finetune.sh, the same for every framework (run with the reference venv).

    python finetune_data.py GGUF OUT_DIR [--docs 32] [--pairs 0] [--seq 512] [--seed 0]

Writes into OUT_DIR:
  model/      SmolLM2-135M-Instruct dequantized to f32 as a plain Hugging Face checkpoint
              (config.json, model.safetensors, tokenizer files): transformers 5 loads the GGUF and
              dequantizes it, but will not save a "gguf-quantized" model, so a plain
              LlamaForCausalLM is rebuilt from its config and state dict.
  docs.jsonl  `--docs` text documents ({"text": ...}), each a seeded random run of examples from
              data/bilingual_instruct.jsonl ("Question: …\\nAnswer: …") long enough to exceed
              `--seq` tokens, so that every framework trains on full rows of exactly `--seq`
              tokens: (seq - 1) label tokens per row, nothing masked, no padding.
  rows.json   the documents tokenized with the model's tokenizer (no BOS: the GGUF says
              add_bos_token false) and cut to `--seq` tokens: what the Python peers train on.
  prefs.jsonl `--pairs` preference pairs, conversational ({"prompt": [user message],
              "chosen" / "rejected": [assistant message]}: both afinar and TRL apply the model's
              chat template), for scripts/bench/dpo.sh: the prompt one example's question, each
              response a different seeded random run of examples' answers, so long that the
              prompt plus either response exceeds `--seq` tokens: with a response cut at the end
              (afinar's long_rows truncate, TRL's max_length) every sequence is exactly `--seq`
              tokens, prompt + chosen and prompt + rejected alike, nothing padded.
afinar reads docs.jsonl itself (dataset.kind=text), which gives the same rows.
"""

import argparse
import json
import os
import random
import sys

from transformers import AutoTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from hf_from_gguf import write_hf_folder  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--data", default="data/bilingual_instruct.jsonl")
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=0)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    mdir = os.path.join(a.out, "model")
    gdir, gname = os.path.split(os.path.abspath(a.gguf))

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    write_hf_folder(a.gguf, mdir)

    examples = [json.loads(l) for l in open(a.data, encoding="utf-8") if l.strip()]
    rng = random.Random(a.seed)
    docs, rows = [], []
    for _ in range(a.docs):
        text = ""
        while True:
            e = rng.choice(examples)
            q = e["instruction"] + ("\n" + e["input"] if e.get("input") else "")
            text += f"Question: {q}\nAnswer: {e['output']}\n\n"
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) > a.seq + 8:
                break
        docs.append(text)
        rows.append(ids[: a.seq])
    with open(os.path.join(a.out, "docs.jsonl"), "w", encoding="utf-8") as f:
        for t in docs:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    with open(os.path.join(a.out, "rows.json"), "w") as f:
        json.dump(rows, f)
    pairs = []
    for _ in range(a.pairs):
        e = rng.choice(examples)
        prompt = e["instruction"] + ("\n" + e["input"] if e.get("input") else "")
        plen = len(tok(prompt, add_special_tokens=False)["input_ids"])
        responses = []
        for _ in range(2):
            text = ""
            while len(tok(text, add_special_tokens=False)["input_ids"]) <= a.seq - plen + 8:
                text += rng.choice(examples)["output"] + "\n\n"
            responses.append([{"role": "assistant", "content": text}])
        pairs.append({"prompt": [{"role": "user", "content": prompt}], "chosen": responses[0],
                      "rejected": responses[1]})
    if pairs:
        with open(os.path.join(a.out, "prefs.jsonl"), "w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"finetune_data: {mdir}, {len(rows)} rows of {a.seq} tokens, {len(pairs)} pairs")


if __name__ == "__main__":
    main()
