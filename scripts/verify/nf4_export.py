#!/usr/bin/env python3
"""Checks afinar's NF4 export (`afinar quantize --scheme nf4`) with transformers + bitsandbytes.

Run by `cargo test -p afinar --test nf4_export` when AFINAR_PYTHON is set (the reference venv,
scripts/reference-venv.sh). The test exports SmolLM2-135M-Instruct (the Q4_1 GGUF asset,
dequantized to f32) as bitsandbytes NF4 folders with the other tensors in bfloat16 and in
float32, loads each folder back into afinar (NF4 matrices kept as they are) to compute the
logits of a few prompts at every position, and writes a JSON spec:

    {"gguf": the GGUF asset,
     "hf_f32": where the same model lives (or is written) as a plain f32 Hugging Face folder,
     "exports": {"bfloat16": folder, "float32": folder},
     "prompts": [{"text": ..., "ids": [...]}, ...],
     "logits": a safetensors file with afinar's logits "<dtype>.<prompt>" [len, vocab] f32}

Checks, exiting non-zero on any failure:
  1. transformers loads every folder with bitsandbytes (`from_pretrained(folder)`, CPU): every
     projection is a `Linear4bit` with NF4, double quantization and the folder's compute dtype,
     the embedding and norms keep that dtype; its tokenizer encodes each prompt into afinar's ids;
  2. its logits agree with afinar's on the same NF4 weights. On a CPU with AVX512-BF16,
     bitsandbytes multiplies 4-bit weights with a bf16 kernel whatever the compute dtype; that
     kernel is turned off for this check (`support_avx512bf16_for_cpu = False`, so the weights
     are dequantized to the compute dtype as on other CPUs and GPUs), and its own numbers are
     printed afterwards for information. float32 folder: both compute in f32 from the same
     dequantized values, so the largest difference must be < 1e-4 of the largest logit (float
     rounding only) and the argmax equal at every position. bfloat16 folder, loaded as a user
     would: transformers computes in bf16, afinar in f32 from the same stored values, so only
     bf16-level agreement is required (largest difference < 10 % of the largest logit, argmax
     equal at >= 90 % of the positions); and loaded again with its bf16 tensors cast to f32 and
     the projections computing in f32: the float32 folder's bounds;
  3. transformers' own path gives the same bytes: the f32 folder is loaded with
     `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
     bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=D)` and `dtype=D` and saved with
     `save_pretrained`; every tensor (name, dtype, shape, bytes) of its model.safetensors must
     equal afinar's, and its config's quantization_config too. Whether the whole files are
     byte-identical is printed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

# scripts/fixtures has a `kernels.py` that would shadow the `kernels` package bitsandbytes probes
# for, so hf_from_gguf is imported by path and that folder is kept off sys.path.
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: E402

FLOAT32_TOL = 1e-4
BF16_TOL = 0.1


def hf_from_gguf():
    spec = importlib.util.spec_from_file_location("hf_from_gguf", HERE.parent / "fixtures" / "hf_from_gguf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def header(path: Path) -> tuple[bytes, dict, int]:
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    return b, json.loads(b[8:8 + n]), 8 + n


def compare_files(ours: Path, ref: Path, what: str, failures: list[str]) -> None:
    a, ha, oa = header(ours)
    b, hb, ob = header(ref)
    ka, kb = set(ha) - {"__metadata__"}, set(hb) - {"__metadata__"}
    if ka != kb:
        failures.append(f"{what}: tensor names differ: only afinar {sorted(ka - kb)[:4]}, "
                        f"only transformers {sorted(kb - ka)[:4]}")
    differing: dict[str, list[str]] = {}
    for k in sorted(ka & kb):
        ea, eb = ha[k], hb[k]
        da = a[oa + ea["data_offsets"][0]:oa + ea["data_offsets"][1]]
        db = b[ob + eb["data_offsets"][0]:ob + eb["data_offsets"][1]]
        if (ea["dtype"], ea["shape"], da) != (eb["dtype"], eb["shape"], db):
            kind = k.split(".weight", 1)[1] or "(weight)" if ".weight" in k else k
            differing.setdefault(kind, []).append(k)
    n = len(ka & kb)
    bad = sum(map(len, differing.values()))
    print(f"{what}: {n - bad}/{n} tensors byte-identical to transformers' save_pretrained; "
          f"whole model.safetensors identical: {a == b} ({len(a)} bytes)")
    for kind, names in differing.items():
        failures.append(f"{what}: {len(names)} {kind} tensors differ from transformers', e.g. {names[:3]}")


def check_folder(dtype: str, folder: Path, spec: dict, logits: dict, failures: list[str],
                 f32_compute: bool = False) -> None:
    """Loads `folder` as a user would (or, with `f32_compute`, with the unquantized tensors cast
    to f32 and every projection computing in f32) and compares its logits with afinar's."""
    want = getattr(torch, dtype)
    what = f"{dtype} (f32 compute)" if f32_compute else dtype
    m = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    m.eval()
    if f32_compute:
        for p in m.parameters():
            if p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
    import bitsandbytes as bnb

    lin4 = [mod for name, mod in m.named_modules() if isinstance(mod, bnb.nn.Linear4bit)]
    n_layers = m.config.num_hidden_layers
    if len(lin4) != 7 * n_layers:
        failures.append(f"{dtype}: {len(lin4)} Linear4bit modules, expected {7 * n_layers}")
    for mod in lin4:
        qs = mod.weight.quant_state
        if f32_compute:
            mod.compute_dtype = torch.float32
        elif qs.quant_type != "nf4" or not qs.nested or mod.compute_dtype != want or qs.dtype != want:
            failures.append(f"{dtype}: a projection is {qs.quant_type}, nested={qs.nested}, compute "
                            f"{mod.compute_dtype}, dtype {qs.dtype}")
            break
    if not f32_compute and (m.model.embed_tokens.weight.dtype != want or m.model.norm.weight.dtype != want):
        failures.append(f"{dtype}: embedding {m.model.embed_tokens.weight.dtype}, norm {m.model.norm.weight.dtype}")

    tok = AutoTokenizer.from_pretrained(folder)
    for i, p in enumerate(spec["prompts"]):
        ids = tok(p["text"], add_special_tokens=False)["input_ids"]
        if ids != p["ids"]:
            failures.append(f"{dtype}: transformers tokenizes {p['text']!r} as {ids}, afinar as {p['ids']}")

    kernel = [getattr(mod, "support_avx512bf16_for_cpu", False) for mod in lin4]

    def compare(bf16_kernel: bool) -> tuple[float, int, int]:
        for mod, k in zip(lin4, kernel):
            mod.support_avx512bf16_for_cpu = bf16_kernel and k
        worst, agree, total = 0.0, 0, 0
        for i, p in enumerate(spec["prompts"]):
            with torch.no_grad():
                out = m(torch.tensor([p["ids"]])).logits[0].float()
            ours = logits[f"{dtype}.{i}"]
            worst = max(worst, float((out - ours).abs().max() / ours.abs().max()))
            agree += int((out.argmax(-1) == ours.argmax(-1)).sum())
            total += len(p["ids"])
        return worst, agree, total

    worst, agree, total = compare(False)
    print(f"{what}: transformers+bitsandbytes vs afinar on the same NF4 weights: largest logit difference "
          f"{worst:.2e} of the largest logit, argmax equal at {agree}/{total} positions")
    if any(kernel):
        w2, a2, t2 = compare(True)
        print(f"{what}:   (with bitsandbytes' AVX512-BF16 CPU kernel: {w2:.2e}, argmax {a2}/{t2})")
    if dtype == "float32" or f32_compute:
        if worst >= FLOAT32_TOL or agree != total:
            failures.append(f"{what}: logits differ by {worst:.2e} (need < {FLOAT32_TOL}), argmax {agree}/{total}")
    elif worst >= BF16_TOL or agree < 0.9 * total:
        failures.append(f"{what}: logits differ by {worst:.2e} (need < {BF16_TOL}), argmax {agree}/{total}")
    del m


def check_bytes(dtype: str, folder: Path, hf_f32: Path, tmp: Path, failures: list[str]) -> None:
    want = getattr(torch, dtype)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=want)
    m = AutoModelForCausalLM.from_pretrained(hf_f32, quantization_config=q, dtype=want, device_map="cpu")
    ref = tmp / f"transformers_{dtype}"
    m.save_pretrained(ref)
    del m
    compare_files(folder / "model.safetensors", ref / "model.safetensors", dtype, failures)
    ours = json.loads((folder / "config.json").read_text())["quantization_config"]
    theirs = json.loads((ref / "config.json").read_text())["quantization_config"]
    if ours != theirs:
        failures.append(f"{dtype}: quantization_config {ours} differs from transformers' {theirs}")


def main() -> int:
    spec = json.load(open(sys.argv[1], encoding="utf-8"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    failures: list[str] = []
    hf_f32 = Path(spec["hf_f32"])
    hf_from_gguf().write_hf_folder(spec["gguf"], str(hf_f32))
    logits = load_file(spec["logits"])
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, folder in spec["exports"].items():
            check_folder(dtype, Path(folder), spec, logits, failures)
            if dtype != "float32":
                check_folder(dtype, Path(folder), spec, logits, failures, f32_compute=True)
            check_bytes(dtype, Path(folder), hf_f32, Path(tmp), failures)
    for f in failures:
        print("FAIL:", f)
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
