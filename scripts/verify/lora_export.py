#!/usr/bin/env python3
"""Checks a LoRA run written by afinar against Hugging Face:

    python scripts/verify/lora_export.py BASE_DIR RUN_DIR

RUN_DIR holds what afinar wrote for one checkpoint (adapter_config.json,
adapter_model.safetensors, merged/) and `afinar_logits.safetensors` (afinar's logits with the
adapter, `logits` [B, T, V], on `input_ids` [B, T]). This script
- loads BASE_DIR with transformers and the adapter with PEFT, runs `input_ids`, and compares with
  afinar's logits;
- loads RUN_DIR/merged with transformers alone and compares likewise.
Prints a JSON summary; exits 1 if either relative error (max |a-b| / max |b|) exceeds 1e-4.
"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def main():
    base_dir, run_dir = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    ref = load_file(f"{run_dir}/afinar_logits.safetensors")
    ids = ref["input_ids"].long()
    ours = ref["logits"].float()
    kw = dict(torch_dtype=torch.float32, attn_implementation="eager")
    base = AutoModelForCausalLM.from_pretrained(base_dir, **kw)
    peft = PeftModel.from_pretrained(base, run_dir).eval()
    with torch.no_grad():
        peft_logits = peft(input_ids=ids).logits
    merged = AutoModelForCausalLM.from_pretrained(f"{run_dir}/merged", **kw).eval()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(base_dir, **kw).eval()(input_ids=ids).logits
    out = {
        "peft_vs_afinar_rel_err": rel(ours, peft_logits),
        "merged_vs_afinar_rel_err": rel(ours, merged_logits),
        "adapter_effect_rel": rel(base_logits, peft_logits),
    }
    print(json.dumps(out))
    ok = out["peft_vs_afinar_rel_err"] < 1e-4 and out["merged_vs_afinar_rel_err"] < 1e-4 and out["adapter_effect_rel"] > 1e-3
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
