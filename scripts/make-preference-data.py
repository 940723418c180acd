#!/usr/bin/env python3
"""Writes data/prefs_bilingual/{train,heldout}.jsonl: a bilingual (English/Spanish) preference set
that teaches one measurable habit: answer in the language of the question, briefly.

Each row is {"prompt", "chosen", "rejected", "lang", "category"}. The chosen response is a brief
answer in the question's language ("Paris." / "París."); the rejected one carries the same content
but breaks the habit (see CYCLE): a full sentence in the question's language ("The capital of
France is Paris."), a full sentence in the other language, or a brief answer in the other language
(for arithmetic, where a number reads the same in both languages, a full sentence instead).

Questions are templates x facts (arithmetic, capitals, colours, days, months, opposites); facts
are split between train and held-out before any question is written, so no held-out question (in
either language) asks about a fact seen in training. Standard library only; seeded:
    python3 scripts/make-preference-data.py [--seed 7] [--out data/prefs_bilingual]
"""

import argparse
import json
import random
from pathlib import Path

CAPITALS = [  # (country en, country es, capital en, capital es)
    ("France", "Francia", "Paris", "París"), ("Germany", "Alemania", "Berlin", "Berlín"),
    ("Italy", "Italia", "Rome", "Roma"), ("Spain", "España", "Madrid", "Madrid"),
    ("Portugal", "Portugal", "Lisbon", "Lisboa"), ("Japan", "Japón", "Tokyo", "Tokio"),
    ("Egypt", "Egipto", "Cairo", "El Cairo"), ("Russia", "Rusia", "Moscow", "Moscú"),
    ("Greece", "Grecia", "Athens", "Atenas"), ("Poland", "Polonia", "Warsaw", "Varsovia"),
    ("Mexico", "México", "Mexico City", "Ciudad de México"), ("Peru", "Perú", "Lima", "Lima"),
    ("Chile", "Chile", "Santiago", "Santiago"), ("Argentina", "Argentina", "Buenos Aires", "Buenos Aires"),
    ("Colombia", "Colombia", "Bogotá", "Bogotá"), ("Canada", "Canadá", "Ottawa", "Ottawa"),
    ("Sweden", "Suecia", "Stockholm", "Estocolmo"), ("Norway", "Noruega", "Oslo", "Oslo"),
    ("Ireland", "Irlanda", "Dublin", "Dublín"), ("Austria", "Austria", "Vienna", "Viena"),
    ("Belgium", "Bélgica", "Brussels", "Bruselas"), ("China", "China", "Beijing", "Pekín"),
    ("India", "India", "New Delhi", "Nueva Delhi"), ("Turkey", "Turquía", "Ankara", "Ankara"),
    ("Cuba", "Cuba", "Havana", "La Habana"), ("Morocco", "Marruecos", "Rabat", "Rabat"),
    ("Hungary", "Hungría", "Budapest", "Budapest"), ("Denmark", "Dinamarca", "Copenhagen", "Copenhague"),
    ("Finland", "Finlandia", "Helsinki", "Helsinki"), ("Kenya", "Kenia", "Nairobi", "Nairobi"),
]
COLOURS = [  # (thing en, thing es, colour en, colour es)
    ("the sky on a clear day", "el cielo en un día despejado", "blue", "azul"),
    ("fresh grass", "la hierba fresca", "green", "verde"), ("a ripe banana", "un plátano maduro", "yellow", "amarillo"),
    ("snow", "la nieve", "white", "blanco"), ("coal", "el carbón", "black", "negro"),
    ("a ripe tomato", "un tomate maduro", "red", "rojo"), ("an orange", "una naranja", "orange", "naranja"),
    ("a lemon", "un limón", "yellow", "amarillo"), ("milk", "la leche", "white", "blanco"),
    ("blood", "la sangre", "red", "rojo"), ("a crow", "un cuervo", "black", "negro"),
    ("the sea", "el mar", "blue", "azul"), ("a lime", "una lima", "green", "verde"),
    ("chocolate", "el chocolate", "brown", "marrón"), ("a flamingo", "un flamenco", "pink", "rosa"),
    ("an eggplant", "una berenjena", "purple", "morado"), ("a frog", "una rana", "green", "verde"),
    ("a strawberry", "una fresa", "red", "rojo"), ("a polar bear", "un oso polar", "white", "blanco"),
    ("a carrot", "una zanahoria", "orange", "naranja"),
]
DAYS_EN = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAYS_ES = ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"]
MONTHS_EN = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
             "October", "November", "December"]
MONTHS_ES = ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
             "octubre", "noviembre", "diciembre"]
OPPOSITES = [  # (word en, word es, opposite en, opposite es)
    ("hot", "caliente", "cold", "frío"), ("big", "grande", "small", "pequeño"), ("up", "arriba", "down", "abajo"),
    ("day", "día", "night", "noche"), ("fast", "rápido", "slow", "lento"), ("happy", "feliz", "sad", "triste"),
    ("open", "abierto", "closed", "cerrado"), ("light", "claro", "dark", "oscuro"), ("old", "viejo", "young", "joven"),
    ("full", "lleno", "empty", "vacío"), ("early", "temprano", "late", "tarde"), ("strong", "fuerte", "weak", "débil"),
    ("rich", "rico", "poor", "pobre"), ("high", "alto", "low", "bajo"), ("wet", "mojado", "dry", "seco"),
    ("hard", "duro", "soft", "blando"), ("near", "cerca", "far", "lejos"), ("clean", "limpio", "dirty", "sucio"),
]


def cap(s):
    return s[:1].upper() + s[1:]


def capitals(f, rng):
    c_en, c_es, k_en, k_es = f
    q = {"en": rng.choice([f"What is the capital of {c_en}?", f"Which city is the capital of {c_en}?",
                           f"Name the capital of {c_en}."]),
         "es": rng.choice([f"¿Cuál es la capital de {c_es}?", f"¿Qué ciudad es la capital de {c_es}?",
                           f"Di la capital de {c_es}."])}
    brief = {"en": f"{k_en}.", "es": f"{k_es}."}
    full = {"en": f"The capital of {c_en} is {k_en}.", "es": f"La capital de {c_es} es {k_es}."}
    return q, brief, full


def colours(f, rng):
    t_en, t_es, col_en, col_es = f
    q = {"en": rng.choice([f"What colour is {t_en}?", f"What is the colour of {t_en}?"]),
         "es": rng.choice([f"¿De qué color es {t_es}?", f"¿Qué color tiene {t_es}?"])}
    brief = {"en": f"{cap(col_en)}.", "es": f"{cap(col_es)}."}
    full = {"en": f"{cap(t_en)} is {col_en}.", "es": f"{cap(t_es)} es de color {col_es}."}
    return q, brief, full


def days(f, rng):
    i, after = f
    j = (i + 1) % 7 if after else (i - 1) % 7
    q = {"en": rng.choice([f"Which day comes {'after' if after else 'before'} {DAYS_EN[i]}?",
                           f"What day is {'after' if after else 'before'} {DAYS_EN[i]}?"]),
         "es": rng.choice([f"¿Qué día va {'después del' if after else 'antes del'} {DAYS_ES[i]}?",
                           f"¿Qué día viene {'después del' if after else 'antes del'} {DAYS_ES[i]}?"])}
    brief = {"en": f"{DAYS_EN[j]}.", "es": f"{cap(DAYS_ES[j])}."}
    full = {"en": f"The day {'after' if after else 'before'} {DAYS_EN[i]} is {DAYS_EN[j]}.",
            "es": f"El día {'después del' if after else 'antes del'} {DAYS_ES[i]} es el {DAYS_ES[j]}."}
    return q, brief, full


def months(f, rng):
    i, after = f
    j = (i + 1) % 12 if after else (i - 1) % 12
    q = {"en": f"Which month comes {'after' if after else 'before'} {MONTHS_EN[i]}?",
         "es": f"¿Qué mes va {'después de' if after else 'antes de'} {MONTHS_ES[i]}?"}
    brief = {"en": f"{MONTHS_EN[j]}.", "es": f"{cap(MONTHS_ES[j])}."}
    full = {"en": f"The month {'after' if after else 'before'} {MONTHS_EN[i]} is {MONTHS_EN[j]}.",
            "es": f"El mes {'después de' if after else 'antes de'} {MONTHS_ES[i]} es {MONTHS_ES[j]}."}
    return q, brief, full


def opposites(f, rng):
    w_en, w_es, o_en, o_es = f
    q = {"en": rng.choice([f"What is the opposite of \"{w_en}\"?", f"Give the opposite of \"{w_en}\"."]),
         "es": rng.choice([f"¿Cuál es el contrario de \"{w_es}\"?", f"Di lo contrario de \"{w_es}\"."])}
    brief = {"en": f"{cap(o_en)}.", "es": f"{cap(o_es)}."}
    full = {"en": f"The opposite of \"{w_en}\" is \"{o_en}\".", "es": f"Lo contrario de \"{w_es}\" es \"{o_es}\"."}
    return q, brief, full


def arithmetic(f, rng):
    a, b, op = f
    r = a + b if op == "+" else a * b
    en_op, es_op = ("plus", "más") if op == "+" else ("times", "por")
    q = {"en": rng.choice([f"What is {a} {en_op} {b}?", f"How much is {a} {en_op} {b}?", f"Compute {a} {op} {b}."]),
         "es": rng.choice([f"¿Cuánto es {a} {es_op} {b}?", f"¿Cuánto son {a} {es_op} {b}?", f"Calcula {a} {op} {b}."])}
    brief = {"en": f"{r}.", "es": f"{r}."}
    full = {"en": f"{a} {en_op} {b} equals {r}.", "es": f"{a} {es_op} {b} es igual a {r}."}
    return q, brief, full


# Which way the rejected response breaks the habit, cycled over each language's rows: a full
# sentence in the question's language (not brief), a full sentence in the other language, a brief
# answer in the other language. The mix is weighted per language towards what the base
# SmolLM2-135M-Instruct gets wrong (measured with `afinar eval` on the held-out set): in English
# it prefers full sentences to brief answers, in Spanish it prefers English answers, while it
# already prefers brief Spanish to full Spanish sentences and English to Spanish answers.
CYCLE = {
    "en": ("full_same", "full_same", "full_same", "full_other"),
    "es": ("brief_other", "full_other", "brief_other", "full_other", "full_same"),
}


def rejected_for(how, lang, brief, full, numeric):
    other = "es" if lang == "en" else "en"
    if how == "full_same":
        return full[lang]
    if how == "full_other" or numeric:  # a bare number reads the same in both languages
        return full[other]
    return brief[other]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "prefs_bilingual"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    arith = sorted({(rng.randint(2, 20), rng.randint(2, 20), "+") for _ in range(125)}
                   | {(rng.randint(2, 9), rng.randint(2, 9), "*") for _ in range(55)})
    # (category, facts, builder, held-out share)
    cats = [
        ("capitals", CAPITALS, capitals), ("colours", COLOURS, colours),
        ("days", [(i, a) for i in range(7) for a in (True, False)], days),
        ("months", [(i, a) for i in range(12) for a in (True, False)], months),
        ("opposites", OPPOSITES, opposites), ("arithmetic", arith, arithmetic),
    ]
    train, heldout = [], []
    kind = {"en": 0, "es": 0}  # each language cycles through every way on its own
    for name, facts, build in cats:
        facts = list(facts)
        rng.shuffle(facts)
        n_held = max(2, round(len(facts) * 0.2))
        for i, f in enumerate(facts):
            q, brief, full = build(f, rng)
            for lang in ("en", "es"):
                row = {"prompt": q[lang], "chosen": brief[lang],
                       "rejected": rejected_for(CYCLE[lang][kind[lang] % len(CYCLE[lang])], lang, brief, full, name == "arithmetic"),
                       "lang": lang, "category": name}
                kind[lang] += 1
                (heldout if i < n_held else train).append(row)
    rng.shuffle(train)
    rng.shuffle(heldout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("heldout", heldout)):
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        by_lang = {l: sum(r["lang"] == l for r in rows) for l in ("en", "es")}
        print(f"{out / (split + '.jsonl')}: {len(rows)} pairs {by_lang}")
    train_q = {r["prompt"] for r in train}
    assert not any(r["prompt"] in train_q for r in heldout), "a held-out question is a train question"


if __name__ == "__main__":
    main()
