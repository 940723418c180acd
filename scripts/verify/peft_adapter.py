#!/usr/bin/env python3
"""Loads a LoRA adapter written by afinar with PEFT and runs a fixed batch through it.

    ~/.cache/afinar/venv/bin/python scripts/verify/peft_adapter.py BASE_DIR ADAPTER_DIR \
        [--out logits.safetensors] [--ids "1,2,3;4,5,6"]

BASE_DIR is a Hugging Face model folder (e.g. tests/fixtures/models/llama31_tiny), ADAPTER_DIR
a PEFT folder (adapter_config.json + adapter_model.safetensors). The base model is loaded in
float32 with transformers, the adapter applied with `peft.PeftModel.from_pretrained`, and the
batch run in eval mode (no dropout).

The batch, unless --ids gives one (rows separated by ';'): 2 rows of 12 tokens,
    ids[b][t] = (17 + 31 * b + 7 * t) % vocab_size,
no padding, attention to every token, positions 0..11.

Checks, reported in the JSON printed on stdout (exit 1 when one fails):
- every lora_A / lora_B tensor of the file was loaded into the PEFT model bit for bit
  (compared as float32), and every LoRA module of the model got its weights from the file;
- PEFT's logits equal those of the base model with the adapter merged by hand,
  W + scaling * B @ A (scaling = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA), to
  within 1e-4 (max abs difference reported);
- the adapter changes the logits (max abs difference from the base model reported; 0 is
  reported, not failed, since a fresh adapter with B = 0 is a valid no-op).

--out writes `logits` (float32 [B, T, V], with the adapter), `base_logits` (without it) and
`input_ids` (int64 [B, T]) as safetensors, for comparison with afinar's own logits.
"""

import argparse
import json
import math
import sys
import warnings

import torch
from peft import PeftConfig, PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

PREFIX = "base_model.model."


def batch(args, vocab):
    if args.ids:
        rows = [[int(x) for x in r.split(",") if x.strip()] for r in args.ids.split(";")]
        if len({len(r) for r in rows}) != 1:
            sys.exit("--ids: every row must have the same length")
        return torch.tensor(rows, dtype=torch.long)
    return torch.tensor([[(17 + 31 * b + 7 * t) % vocab for t in range(12)] for b in range(2)],
                        dtype=torch.long)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("adapter")
    ap.add_argument("--out")
    ap.add_argument("--ids")
    args = ap.parse_args()
    torch.manual_seed(0)

    problems = []
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    base.eval()
    ids = batch(args, base.config.vocab_size)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.float().clone()

    cfg = PeftConfig.from_pretrained(args.adapter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32), args.adapter
        )
    model.eval()
    warn_msgs = [str(w.message) for w in caught]
    for m in warn_msgs:
        if "missing adapter keys" in m.lower() or "unexpected" in m.lower():
            problems.append(f"PEFT warned: {m}")
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()

    # The file's LoRA tensors against what PEFT put in the model.
    file_tensors = load_file(f"{args.adapter}/adapter_model.safetensors")
    params = dict(model.named_parameters())
    matched, mismatched, missing = 0, [], []
    for name, t in sorted(file_tensors.items()):
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        pname = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        p = params.get(pname)
        if p is None:
            missing.append(name)
        elif p.shape != t.shape or not torch.equal(p.detach().float(), t.float()):
            mismatched.append(name)
        else:
            matched += 1
    model_lora = sorted(n for n in params if ".lora_A.default." in n or ".lora_B.default." in n)
    not_from_file = [n for n in model_lora
                     if n.replace(".default.weight", ".weight") not in file_tensors]
    if missing:
        problems.append(f"tensors of the file PEFT did not load: {missing}")
    if mismatched:
        problems.append(f"tensors PEFT loaded with other values: {mismatched}")
    if not_from_file:
        problems.append(f"LoRA modules of the model the file gave no weights: {not_from_file}")

    # The same adapter merged by hand into the base weights.
    r, alpha = cfg.r, cfg.lora_alpha
    scaling = alpha / math.sqrt(r) if getattr(cfg, "use_rslora", False) else alpha / r
    merged = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    merged.eval()
    sd = merged.state_dict()
    modules = sorted({n[len(PREFIX):-len(".lora_A.weight")] for n in file_tensors
                      if n.endswith(".lora_A.weight")})
    with torch.no_grad():
        for m in modules:
            a = file_tensors[f"{PREFIX}{m}.lora_A.weight"].double()
            b = file_tensors[f"{PREFIX}{m}.lora_B.weight"].double()
            w = sd.get(f"{m}.weight")
            if w is None:
                problems.append(f"the base model has no weight '{m}.weight' for LoRA module '{m}'")
                continue
            w.copy_((w.double() + scaling * (b @ a)).float())
        merged_logits = merged(input_ids=ids).logits.float()
    diff_merge = float((logits - merged_logits).abs().max())
    if not diff_merge <= 1e-4:
        problems.append(f"PEFT's logits differ from the hand-merged model's by {diff_merge}")
    diff_base = float((logits - base_logits).abs().max())

    if args.out:
        save_file({"logits": logits.contiguous(), "base_logits": base_logits.contiguous(),
                   "input_ids": ids.contiguous()}, args.out)

    summary = {
        "ok": not problems,
        "problems": problems,
        "peft_type": str(cfg.peft_type.value if hasattr(cfg.peft_type, "value") else cfg.peft_type),
        "r": r,
        "lora_alpha": alpha,
        "scaling": scaling,
        "target_modules": sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str)
        else cfg.target_modules,
        "lora_modules": modules,
        "lora_tensors_in_file": sum(1 for n in file_tensors if ".lora_" in n),
        "lora_tensors_matched": matched,
        "lora_params_in_model": len(model_lora),
        "input_ids": ids.tolist(),
        "logits_shape": list(logits.shape),
        "logits_sum": float(logits.double().sum()),
        "logits_first": logits[0, 0, :8].tolist(),
        "max_abs_diff_vs_hand_merge": diff_merge,
        "max_abs_diff_vs_base": diff_base,
        "warnings": warn_msgs,
        "out": args.out,
    }
    json.dump(summary, sys.stdout, indent=1)
    print()
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
