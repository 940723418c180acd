#!/usr/bin/env python3
"""Writes data/grpo_arith/{train,heldout}.jsonl: a small verifiable task for GRPO, short arithmetic
word questions in English and Spanish whose reward can be checked by rule.

Each row is {"prompt": [one user message], "answer": <the number, an int>, "lang": "en"|"es",
"op": <the operations, e.g. "add" or "add_sub">}. The user message is the question, then an
instruction (in the question's language) to answer briefly and write the final number on the last
line in a strict format: "Answer: 42" (English) / "Respuesta: 42" (Spanish).

Questions: one operation (a + b, a - b with a > b, a x b with one factor at most 5) on numbers
under 20, or two operations (a + b - c, a + b + c) with small numbers, from templates (names,
objects) per language. Most rows are one addition or subtraction, so SmolLM2-135M-Instruct gets
a share right from the start. Held-out rows are drawn after the training rows, and any (language,
question) already in training is drawn again, so no held-out question is a training question.

Standard library only; deterministic for a seed:
    python3 scripts/make-grpo-data.py [--seed 11] [--train 400] [--heldout 100] [--out data/grpo_arith]
(--train / --heldout are rows per language).
"""

import argparse
import json
import random
from pathlib import Path

# Appended to the question, in the user message (SmolLM2-135M-Instruct follows an instruction
# there a little more often than in a system message).
INSTRUCTION = {
    "en": "Answer briefly. Write the final number on the last line as: Answer: <number>",
    "es": "Responde brevemente. Escribe el número final en la última línea así: Respuesta: <número>",
}

NAMES = {
    "en": ["Tom", "Anna", "Sam", "Lucy", "Ben", "Mia", "Jack", "Emma", "Leo", "Grace"],
    "es": ["Ana", "Pablo", "Lucía", "Diego", "Sofía", "Carlos", "Elena", "Javier", "Marta", "Luis"],
}

# (en plural, es plural, es gender: "m" or "f")
THINGS = [
    ("apples", "manzanas", "f"), ("books", "libros", "m"), ("pencils", "lápices", "m"),
    ("cookies", "galletas", "f"), ("marbles", "canicas", "f"), ("stickers", "pegatinas", "f"),
    ("cards", "cartas", "f"), ("balloons", "globos", "m"), ("coins", "monedas", "f"),
    ("flowers", "flores", "f"), ("toy cars", "coches de juguete", "m"), ("shells", "conchas", "f"),
]


def cuantos(g):
    return "Cuántos" if g == "m" else "Cuántas"


def question(rng, lang):
    name = rng.choice(NAMES[lang])
    other = rng.choice([n for n in NAMES[lang] if n != name])
    en, es, g = rng.choice(THINGS)
    kind = rng.choices(["add", "sub", "mul", "add_sub", "add_add"], weights=[40, 25, 10, 15, 10])[0]
    if kind == "add":
        a, b = rng.randint(1, 15), rng.randint(1, 9)
        ans = a + b
        q = {
            "en": f"{name} has {a} {en}. {other} gives {name} {b} more. How many {en} does {name} have now?",
            "es": f"{name} tiene {a} {es}. {other} le da {b} más. ¿{cuantos(g)} {es} tiene {name} ahora?",
        }
    elif kind == "sub":
        a = rng.randint(5, 19)
        b = rng.randint(1, a - 1)
        ans = a - b
        q = {
            "en": f"{name} had {a} {en} and gave {b} to {other}. How many {en} does {name} have left?",
            "es": f"{name} tenía {a} {es} y le dio {b} a {other}. ¿{cuantos(g)} {es} le quedan a {name}?",
        }
    elif kind == "mul":
        a, b = rng.randint(2, 5), rng.randint(2, 9)
        ans = a * b
        q = {
            "en": f"{name} has {a} boxes with {b} {en} in each box. How many {en} are there in total?",
            "es": f"{name} tiene {a} cajas con {b} {es} en cada caja. ¿{cuantos(g)} {es} hay en total?",
        }
    elif kind == "add_sub":
        a, b = rng.randint(2, 12), rng.randint(1, 8)
        c = rng.randint(1, a + b - 1)
        ans = a + b - c
        q = {
            "en": f"{name} has {a} {en}, buys {b} more and then gives {c} to {other}. How many {en} does {name} have now?",
            "es": f"{name} tiene {a} {es}, compra {b} más y luego le da {c} a {other}. ¿{cuantos(g)} {es} tiene {name} ahora?",
        }
    else:
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        ans = a + b + c
        q = {
            "en": f"{name} has {a} {en}, {other} has {b} and a friend has {c}. How many {en} do they have together?",
            "es": f"{name} tiene {a} {es}, {other} tiene {b} y un amigo tiene {c}. ¿{cuantos(g)} {es} tienen entre todos?",
        }
    return q[lang], ans, kind


def row(text, ans, kind, lang):
    return {
        "prompt": [{"role": "user", "content": f"{text}\n{INSTRUCTION[lang]}"}],
        "answer": ans,
        "lang": lang,
        "op": kind,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--train", type=int, default=400, help="training rows per language")
    ap.add_argument("--heldout", type=int, default=100, help="held-out rows per language")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "grpo_arith"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    seen = set()
    splits = {"train": [], "heldout": []}
    for split, per_lang in (("train", args.train), ("heldout", args.heldout)):
        per = {"en": [], "es": []}
        for lang in ("en", "es"):
            while len(per[lang]) < per_lang:
                text, ans, kind = question(rng, lang)
                if (lang, text) in seen:
                    continue
                seen.add((lang, text))
                per[lang].append(row(text, ans, kind, lang))
        # Alternate languages so that any first N rows stay balanced.
        for en_row, es_row in zip(per["en"], per["es"]):
            splits[split] += [en_row, es_row]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        path = out / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        tmp.replace(path)
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
