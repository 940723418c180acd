#!/usr/bin/env python3
"""Checks afinar's Qwen3 GGUF export with llama.cpp (llama-cpp-python from the reference venv).

Run by `cargo test -p afinar --test qwen3` when AFINAR_PYTHON is set and `import llama_cpp`
works. The test exports a tiny random Qwen3 with the real Qwen3 vocabulary
(scripts/fixtures/qwen3_vocab.py) as an F32 GGUF, generates 32 tokens greedily with afinar
(f32 KV cache) and writes a JSON spec:

    {"file": the GGUF,
     "prompts": [{"text": ..., "ids": afinar's ids, "tokens": afinar's 32 greedy tokens,
                  "last_logits": afinar's logits at the prompt's last position}, ...]}

llama.cpp runs with an f32 KV cache (its default f16 cache would round K and V, which afinar
does not). Checks, exiting non-zero on any failure:
  1. llama.cpp loads the file (architecture qwen3, tokenizer `gpt2` with pre `qwen2`) and
     tokenizes each prompt into afinar's ids (special tokens included);
  2. its logits at the prompt's last position agree with afinar's: relative error (L2 norm of
     the difference over the L2 norm) < LOGITS_REL. Both multiply the same f32 weights in f32;
     only the order of the sums differs (llama.cpp's SIMD dot products and its softmax), which
     on a 2-layer, 64-wide model moves logits by ~1e-6 relative, so 1e-4 is a wide margin
     that a real difference (a permuted Q/K row, a wrong norm, a missing q/k norm gain, a
     wrong RoPE base) exceeds by orders of magnitude;
  3. llama.cpp's greedy continuation equals afinar's, token for token: it is fed the prompt and
     then afinar's tokens one by one and its argmax must be afinar's token at every step (by
     induction, its own greedy path is afinar's). The smallest top-1 minus top-2 gap of
     llama.cpp's logits over those steps is printed (a near tie would make equality luck).
"""

from __future__ import annotations

import ctypes
import json
import sys

import numpy as np
import llama_cpp

LOGITS_REL = 1e-4
GGML_TYPE_F32 = 0


def last_logits(m: llama_cpp.Llama) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(m.ctx, -1)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(m.n_vocab(),)).copy()


def main() -> int:
    spec = json.load(open(sys.argv[1], encoding="utf-8"))
    failures: list[str] = []
    m = llama_cpp.Llama(model_path=spec["file"], n_ctx=512, n_threads=2, seed=0, verbose=False,
                        type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    meta = m.metadata
    for key, want in [("general.architecture", "qwen3"), ("tokenizer.ggml.model", "gpt2"),
                      ("tokenizer.ggml.pre", "qwen2")]:
        if meta.get(key) != want:
            failures.append(f"{key} is {meta.get(key)!r}, expected {want!r}")
    print(f"llama.cpp loaded {spec['file']}: n_vocab {m.n_vocab()}, eos {m.token_eos()}, "
          f"pad {meta.get('tokenizer.ggml.padding_token_id')}")
    for p in spec["prompts"]:
        where = f"prompt {p['text'][:40]!r}"
        ids = m.tokenize(p["text"].encode(), add_bos=False, special=True)
        if ids != p["ids"]:
            failures.append(f"{where}: llama.cpp tokenizes it as {ids}, afinar as {p['ids']}")
        m.reset()
        m.eval(p["ids"])
        row = last_logits(m)
        ours = np.asarray(p["last_logits"], dtype=np.float32)
        rel = float(np.linalg.norm(row - ours) / np.linalg.norm(ours))
        maxabs = float(np.abs(row - ours).max())
        if not rel < LOGITS_REL:
            failures.append(f"{where}: last-position logits relative error {rel:.2e} (need < {LOGITS_REL})")
        tops, margins = [], []
        for t in p["tokens"]:
            srt = np.sort(row)
            margins.append(float(srt[-1] - srt[-2]))
            tops.append(int(row.argmax()))
            m.eval([t])
            row = last_logits(m)
        agree = sum(a == b for a, b in zip(tops, p["tokens"]))
        first = next((i for i, (a, b) in enumerate(zip(tops, p["tokens"])) if a != b), len(tops))
        print(f"{where}: logits rel err {rel:.2e} (max abs {maxabs:.2e}, logit std {ours.std():.2f}); "
              f"greedy identical for {first}/{len(tops)} tokens, smallest top-2 gap {min(margins):.4f}; "
              f"{m.detokenize(p['tokens']).decode(errors='replace')!r}")
        if agree != len(tops):
            failures.append(f"{where}: llama.cpp's greedy path leaves afinar's at token {first} "
                            f"(llama.cpp {tops}, afinar {p['tokens']})")
    m.close()
    for f in failures:
        print("FAIL:", f)
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
