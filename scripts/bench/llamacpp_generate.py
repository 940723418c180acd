"""llama.cpp side of scripts/bench/generate.sh: prompt evaluation and greedy generation speed
through llama-cpp-python on a GGUF file.

    python llamacpp_generate.py MODEL.gguf PROMPT_FILE [--new 128] [--threads 2] [--repeats 2]

scripts/bench/generate.sh runs it with `--repeats 1`, once per round, alternating with afinar.
Prints one JSON line per repeat: prompt tokens, prompt tokens/s, generated tokens, generated
tokens/s. The prompt is timed as one `eval` of all its tokens (batches of n_batch = 512); then
each new token is the argmax of the last logits, fed back with `eval`, exactly `--new` times (no
stop at end-of-sequence, so every repeat does the same work). The tokens are tokenized as
`afinar generate` does for a raw prompt: the model's BOS rule, no special-token parsing.
"""

import argparse
import ctypes
import json
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompt_file")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    a = ap.parse_args()

    llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads,
                n_ctx=a.n_ctx, verbose=False)
    text = open(a.prompt_file, encoding="utf-8").read()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    n_vocab = llm.n_vocab()
    if len(tokens) + a.new > a.n_ctx:
        sys.exit(f"prompt ({len(tokens)} tokens) + {a.new} new tokens do not fit n_ctx {a.n_ctx}")

    def last_logits_argmax():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        return int(arr.argmax())

    for _ in range(a.repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        nxt = last_logits_argmax()
        t1 = time.perf_counter()
        out = [nxt]
        for _ in range(a.new - 1):
            llm.eval([nxt])
            nxt = last_logits_argmax()
            out.append(nxt)
        t2 = time.perf_counter()
        # As in afinar's statistics: the prompt pass produces the first new token; the remaining
        # new-1 tokens are timed as generation.
        print(json.dumps({
            "prompt_tokens": len(tokens),
            "prompt_tps": len(tokens) / (t1 - t0),
            "generated_tokens": len(out),
            "gen_tps": (len(out) - 1) / (t2 - t1),
            "text": llm.detokenize(out).decode("utf-8", "replace")[:80],
        }), flush=True)


if __name__ == "__main__":
    main()
