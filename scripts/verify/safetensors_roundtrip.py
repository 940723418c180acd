#!/usr/bin/env python3
"""Checks safetensors files written by afinar with the python `safetensors` library.

    ~/.cache/afinar/venv/bin/python scripts/verify/safetensors_roundtrip.py PATH [--max-values N]

PATH is a `.safetensors` file or a folder (every `*.safetensors` in it, and
`*.safetensors.index.json` when present). Each file is loaded with
`safetensors.torch.load_file`, its metadata read with `safe_open`, and it is saved again with
`safetensors.torch.save_file` to compare bytes with what afinar wrote. An index is checked
against its shards (every tensor in the shard it names, no tensor missing from the map,
`metadata.total_size` = the sum of tensor bytes).

Prints one JSON object on stdout:
  {"ok": bool, "problems": [...],
   "files": {file: {"metadata": {...}, "identical_bytes": bool, "identical_content": bool,
                    "tensors": {name: {"dtype": "BF16", "shape": [..], "nbytes": n,
                                       "sum": float, "values": [float, ...]}}}},
   "index": {"file": ..., "total_size": n, "weight_map_ok": bool} | null}
`values` holds every value (as float64 from the stored dtype) of a tensor with at most N
elements (default 64), else the first N. Exits 1 when a check fails.
"""

import argparse
import json
import os
import struct
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return n, header, data


def check_file(path, max_values, problems):
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    n, header, data = header_of(path)
    if (8 + n) % 8 != 0:
        problems.append(f"{path}: header length {n} leaves the data section unaligned")
    out = {}
    for name in sorted(tensors):
        t = tensors[name]
        flat = t.reshape(-1).to(torch.float64)
        vals = flat[:max_values].tolist()
        out[name] = {
            "dtype": DTYPES.get(t.dtype, str(t.dtype)),
            "shape": list(t.shape),
            "nbytes": t.numel() * t.element_size(),
            "sum": float(flat.sum()) if t.numel() else 0.0,
            "values": vals,
        }
    # Save the same tensors again with the reference implementation and compare.
    with tempfile.TemporaryDirectory() as d:
        again = os.path.join(d, "again.safetensors")
        save_file(tensors, again, metadata=metadata or None)
        with open(path, "rb") as a, open(again, "rb") as b:
            identical = a.read() == b.read()
        _, h2, data2 = header_of(again)
    identical_content = header == h2 and data == data2
    if not identical_content:
        problems.append(f"{path}: header or data differ from safetensors.save_file's")
    return {
        "metadata": metadata,
        "identical_bytes": identical,
        "identical_content": identical_content,
        "tensors": out,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--max-values", type=int, default=64)
    args = ap.parse_args()

    problems = []
    if os.path.isdir(args.path):
        names = sorted(os.listdir(args.path))
        files = [os.path.join(args.path, n) for n in names if n.endswith(".safetensors")]
        indexes = [os.path.join(args.path, n) for n in names if n.endswith(".safetensors.index.json")]
    else:
        files, indexes = [args.path], []
    if not files:
        problems.append(f"{args.path}: no .safetensors file")

    summary = {"files": {}, "index": None}
    for path in files:
        try:
            summary["files"][os.path.basename(path)] = check_file(path, args.max_values, problems)
        except Exception as e:  # noqa: BLE001 - report every failure in the JSON
            problems.append(f"{path}: {type(e).__name__}: {e}")

    for index in indexes:
        with open(index) as f:
            idx = json.load(f)
        wm = idx.get("weight_map", {})
        ok = True
        total = 0
        seen = set()
        for fname, info in summary["files"].items():
            for name, t in info["tensors"].items():
                seen.add(name)
                total += t["nbytes"]
                if wm.get(name) != fname:
                    ok = False
                    problems.append(f"{index}: weight_map puts '{name}' in {wm.get(name)}, it is in {fname}")
        for name in wm:
            if name not in seen:
                ok = False
                problems.append(f"{index}: weight_map names '{name}', which no shard holds")
        declared = idx.get("metadata", {}).get("total_size")
        if declared != total:
            ok = False
            problems.append(f"{index}: metadata.total_size is {declared}, the tensors hold {total} bytes")
        summary["index"] = {"file": os.path.basename(index), "total_size": declared, "weight_map_ok": ok}

    summary["problems"] = problems
    summary["ok"] = not problems
    json.dump(summary, sys.stdout, indent=1, sort_keys=True)
    print()
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
