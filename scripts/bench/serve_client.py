#!/usr/bin/env python3
"""Load generator for scripts/bench/serve.sh: CLIENTS concurrent streaming chat requests (the
official `openai` client) against an OpenAI-compatible server; one JSON line per round with each
request's time to first token and token count, appended to OUT.

    serve_client.py run BASE_URL MODEL LABEL OUT [--clients 8] [--max-tokens 64]
    serve_client.py report OUT       # the table: total tokens/s and p50/p99 time to first token

Tokens are the usage counts when the server sends them (`stream_options.include_usage`), else the
number of content chunks. Each client has its own prompt, so no server can reuse another's prefix.
One short unmeasured request warms the server up first.
"""
import argparse
import concurrent.futures as cf
import json
import statistics
import sys
import time

from openai import OpenAI

TOPICS = ["a lighthouse keeper", "a lost robot", "the first snow", "a clockmaker", "a dragon who bakes",
          "a sailor and a whale", "a city under the sea", "a talking cat", "an old map", "a winter garden",
          "the last train", "a kite festival", "a painter's dream", "a desert star", "a library at night",
          "a tiny volcano"]


def one(client, model, i, max_tokens):
    t0 = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}],
        max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for c in chunk.choices:
            if c.delta is not None and c.delta.content:
                if first is None:
                    first = time.perf_counter() - t0
                chunks += 1
    end = time.perf_counter() - t0
    return {"ttft": first, "tokens": usage if usage is not None else chunks,
            "from_usage": usage is not None, "end": end}


def run(a):
    client = OpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=900)
    # One unmeasured request first: both servers start fresh each round.
    client.chat.completions.create(model=a.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                   temperature=0)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(a.clients) as pool:
        reqs = list(pool.map(lambda i: one(client, a.model, i, a.max_tokens), range(a.clients)))
    wall = time.perf_counter() - t0
    row = {"label": a.label, "wall": wall, "requests": reqs}
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    toks = sum(r["tokens"] for r in reqs)
    print(f"{a.label}: {toks} tokens in {wall:.2f} s = {toks / wall:.1f} tokens/s; "
          f"TTFT {min(r['ttft'] for r in reqs):.2f}–{max(r['ttft'] for r in reqs):.2f} s", file=sys.stderr)


def pct(values, p):
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def report(a):
    rows = [json.loads(line) for line in open(a.out)]
    print("| server | rounds | requests | total tokens/s (median of rounds; range) | TTFT p50 (s) | TTFT p99 (s) | tokens per request |")
    print("|---|---|---|---|---|---|---|")
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        tps = [sum(q["tokens"] for q in r["requests"]) / r["wall"] for r in mine]
        ttft = [q["ttft"] for r in mine for q in r["requests"] if q["ttft"] is not None]
        toks = [q["tokens"] for r in mine for q in r["requests"]]
        src = "usage" if all(q["from_usage"] for r in mine for q in r["requests"]) else "chunks"
        print(f"| {label} | {len(mine)} | {len(toks)} | {statistics.median(tps):.1f} ({min(tps):.1f}–{max(tps):.1f}) "
              f"| {pct(ttft, 50):.2f} | {pct(ttft, 99):.2f} | {min(toks)}–{max(toks)} ({src}) |")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("base_url")
    r.add_argument("model")
    r.add_argument("label")
    r.add_argument("out")
    r.add_argument("--clients", type=int, default=8)
    r.add_argument("--max-tokens", type=int, default=64)
    s = sub.add_parser("report")
    s.add_argument("out")
    a = p.parse_args()
    run(a) if a.cmd == "run" else report(a)


if __name__ == "__main__":
    main()
