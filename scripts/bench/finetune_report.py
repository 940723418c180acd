"""Table of scripts/bench/finetune.sh from the runs' own logs.

    python finetune_report.py RUN...     RUN = mode|framework|kind|log|time_file

kind: afinar (OUTPUT_DIR/metrics.jsonl: label_tokens, tokens_per_sec, per step), hf (the JSON
lines of hf_finetune.py), torchtune (its DiskLogger file: tokens_per_second_per_gpu counts the
unshifted labels, seq per row, so the step time is batch*seq / that; the label tokens trained per
step are batch*(seq-1), as for the others). time_file: the output of /usr/bin/time -v (peak RSS of
the whole process). The first step is warm-up and left out; tokens/s = label tokens of the other
steps / their seconds. Ratios are against the fastest peer (not afinar) of the same mode.
Exits 1 if a run has no usable steps.
"""

import glob
import json
import re
import sys


def steps_of(kind, log, batch, seq):
    out = []   # (step, label_tokens, secs, loss)
    if kind == "afinar":
        for l in open(log):
            if l.strip():
                m = json.loads(l)
                out.append((m["step"], m["label_tokens"], m["label_tokens"] / m["tokens_per_sec"], m["loss"]))
    elif kind == "hf":
        for l in open(log):
            m = json.loads(l) if l.startswith("{") else {}
            if "step" in m:
                out.append((m["step"], m["label_tokens"], m["secs"], m["loss"]))
    elif kind == "torchtune":
        files = sorted(glob.glob(log))
        for l in open(files[-1]) if files else []:
            m = re.match(r"Step (\d+) \| (.*)", l)
            if m:
                kv = dict(x.split(":", 1) for x in m.group(2).split())
                secs = batch * seq / float(kv["tokens_per_second_per_gpu"])
                out.append((int(m.group(1)), batch * (seq - 1), secs, float(kv["loss"])))
    return out


def peak_rss_gb(time_file):
    try:
        for l in open(time_file):
            if "Maximum resident set size" in l:
                return int(l.split(":")[1]) / 1e6
    except OSError:
        pass
    return None


def main():
    batch, seq = int(sys.argv[1]), int(sys.argv[2])
    rows, bad = [], False
    for spec in sys.argv[3:]:
        mode, name, kind, log, tfile = spec.split("|")
        try:
            st = steps_of(kind, log, batch, seq)
        except (OSError, ValueError, KeyError):
            st = []
        timed = [s for s in st if s[0] > 1]
        if not timed:
            bad = True
            rows.append((mode, name, None, None, None, None, None))
            continue
        tps = sum(s[1] for s in timed) / sum(s[2] for s in timed)
        rows.append((mode, name, len(timed), timed[0][1], tps, peak_rss_gb(tfile), st[0][3]))
    print(f"| mode | framework | steps timed | label tokens/step | tokens/s | vs fastest peer | peak RSS GB | step-1 loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for mode, name, n, lt, tps, rss, loss in rows:
        if tps is None:
            print(f"| {mode} | {name} | — | — | failed / not measured | — | — | — |")
            continue
        peers = [r[4] for r in rows if r[0] == mode and r[4] and not r[1].startswith("afinar")]
        ratio = f"{tps / max(peers):.2f}" if peers else "—"
        rss_s = f"{rss:.2f}" if rss else "—"
        print(f"| {mode} | {name} | {n} | {lt} | {tps:.1f} | {ratio} | {rss_s} | {loss:.4f} |")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
