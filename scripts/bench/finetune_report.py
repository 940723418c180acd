"""Table of scripts/bench/finetune.sh from the runs' own logs.

    python finetune_report.py [--tokens N] [--check KEY] [--unit WORDS] BATCH SEQ RUN...
                                         RUN = mode|framework|kind|log|time_file[|round]

kind: afinar (OUTPUT_DIR/metrics.jsonl: label_tokens, tokens_per_sec, per step), hf (the JSON
lines of hf_finetune.py), torchtune (its DiskLogger file: tokens_per_second_per_gpu counts the
unshifted labels, seq per row, so the step time is batch*seq / that; the label tokens trained per
step are batch*(seq-1), as for the others). time_file: the output of /usr/bin/time -v (peak RSS of
the whole process). The first step is warm-up and left out; tokens/s = label tokens of the other
steps / their seconds. Ratios are against the fastest peer (not afinar) of the same mode and
round. With several rounds, a second table gives each framework's median tokens/s and peak RSS
over the rounds, the ratios of those medians to the fastest peer's, and the range of the
per-round ratios. Exits 1 if a run has no usable steps.

--tokens N: count N tokens per step for every run (scripts/bench/dpo.sh: the sequence tokens of a
step, which afinar's metrics do not log), with each run's own step seconds. --check KEY: the
step-1 column shows that metric (afinar's metrics.jsonl and the hf JSON lines) instead of the loss.
--unit WORDS: what is counted, for the column heads (WORDS/step, WORDS/s; scripts/bench/grpo.sh:
"prompts" with --tokens 4, "completion tokens" without). The per-step column is the mean over the
timed steps (the same as any one of them where every step counts the same).
"""

import glob
import json
import re
import sys


def steps_of(kind, log, batch, seq, tokens=None, check="loss"):
    out = []   # (step, tokens counted, secs, check value)
    if kind == "afinar":
        for l in open(log):
            if l.strip():
                m = json.loads(l)
                secs = m["label_tokens"] / m["tokens_per_sec"]
                out.append((m["step"], tokens or m["label_tokens"], secs, m[check]))
    elif kind == "hf":
        for l in open(log):
            try:   # the JSON lines only (TRL's Trainer also prints Python dicts)
                m = json.loads(l) if l.startswith("{") else {}
            except ValueError:
                m = {}
            if "step" in m:
                out.append((m["step"], tokens or m["label_tokens"], m["secs"], m[check]))
    elif kind == "torchtune":
        files = sorted(glob.glob(log))
        for l in open(files[-1]) if files else []:
            m = re.match(r"Step (\d+) \| (.*)", l)
            if m:
                kv = dict(x.split(":", 1) for x in m.group(2).split())
                secs = batch * seq / float(kv["tokens_per_second_per_gpu"])
                out.append((int(m.group(1)), tokens or batch * (seq - 1), secs, float(kv[check])))
    return out


def peak_rss_gb(time_file):
    try:
        for l in open(time_file):
            if "Maximum resident set size" in l:
                return int(l.split(":")[1]) / 1e6
    except OSError:
        pass
    return None


def rate_s(v):
    """A rate: one decimal, or three significant digits below 10 (GRPO's prompts/s)."""
    return f"{v:.1f}" if v >= 10 else f"{v:.3g}"


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def main():
    args, tokens, check, unit = sys.argv[1:], None, "loss", None
    while args and args[0] in ("--tokens", "--check", "--unit"):
        if args[0] == "--tokens":
            tokens = int(args[1])
        elif args[0] == "--unit":
            unit = args[1]
        else:
            check = args[1]
        args = args[2:]
    batch, seq = int(args[0]), int(args[1])
    rows, bad = [], False
    for spec in args[2:]:
        parts = spec.split("|")
        mode, name, kind, log, tfile = parts[:5]
        rnd = int(parts[5]) if len(parts) > 5 else 1
        try:
            st = steps_of(kind, log, batch, seq, tokens, check)
        except (OSError, ValueError, KeyError):
            st = []
        timed = [s for s in st if s[0] > 1]
        if not timed:
            bad = True
            rows.append((rnd, mode, name, None, None, None, None, None))
            continue
        tps = sum(s[1] for s in timed) / sum(s[2] for s in timed)
        per_step = sum(s[1] for s in timed) / len(timed)
        rows.append((rnd, mode, name, len(timed), per_step, tps, peak_rss_gb(tfile), st[0][3]))
    rounds = sorted({r[0] for r in rows})
    many = len(rounds) > 1

    def fastest_peer(rnd, mode, col):
        vals = [r[col] for r in rows if r[0] == rnd and r[1] == mode and r[5] and not r[2].startswith("afinar")]
        return max(vals) if vals else None

    head = "| round " if many else ""
    counted = f"{unit}/step" if unit else "tokens/step" if tokens else "label tokens/step"
    rate = f"{unit}/s" if unit else "tokens/s"
    print(f"{head}| mode | framework | steps timed | {counted} | {rate} | vs fastest peer | peak RSS GB | step-1 {check} |")
    print(("|---:" if many else "") + "|---|---|---:|---:|---:|---:|---:|---:|")
    for rnd, mode, name, n, lt, tps, rss, loss in rows:
        lead = f"| {rnd} " if many else ""
        if tps is None:
            print(f"{lead}| {mode} | {name} | — | — | failed / not measured | — | — | — |")
            continue
        best = fastest_peer(rnd, mode, 5)
        ratio = f"{tps / best:.2f}" if best else "—"
        rss_s = f"{rss:.2f}" if rss else "—"
        lt_s = f"{lt:.0f}" if lt == int(lt) else f"{lt:.1f}"
        print(f"{lead}| {mode} | {name} | {n} | {lt_s} | {rate_s(tps)} | {ratio} | {rss_s} | {loss:.4f} |")
    if many:
        print()
        print(f"| mode | framework | rounds | median {rate} | vs fastest peer (medians) | per-round ratios "
              "| median peak RSS GB | RSS vs fastest peer |")
        print("|---|---|---:|---:|---:|---|---:|---:|")
        keys = []
        for r in rows:
            if (r[1], r[2]) not in keys:
                keys.append((r[1], r[2]))
        med = {}
        for mode, name in keys:
            ok = [r for r in rows if (r[1], r[2]) == (mode, name) and r[5]]
            if ok:
                rss = [r[6] for r in ok if r[6]]
                med[(mode, name)] = (median([r[5] for r in ok]), median(rss) if rss else None)
        for mode, name in keys:
            if (mode, name) not in med:
                print(f"| {mode} | {name} | 0 | failed | — | — | — | — |")
                continue
            tps, rss = med[(mode, name)]
            peers = [(v, k[1]) for k, v in med.items() if k[0] == mode and not k[1].startswith("afinar")]
            best = max(peers, key=lambda p: p[0][0]) if peers else None
            per_round = []
            for r in rows:
                if (r[1], r[2]) == (mode, name) and r[5]:
                    b = fastest_peer(r[0], mode, 5)
                    if b:
                        per_round.append(r[5] / b)
            n = len([r for r in rows if (r[1], r[2]) == (mode, name) and r[5]])
            ratio = f"{tps / best[0][0]:.2f}" if best else "—"
            rng = f"{min(per_round):.2f}–{max(per_round):.2f}" if per_round else "—"
            rss_s = f"{rss:.2f}" if rss else "—"
            rss_r = f"{rss / best[0][1]:.2f}" if best and rss and best[0][1] else "—"
            print(f"| {mode} | {name} | {n} | {rate_s(tps)} | {ratio} | {rng} | {rss_s} | {rss_r} |")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
