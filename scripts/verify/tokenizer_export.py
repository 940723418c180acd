#!/usr/bin/env python3
"""Checks a tokenizer folder exported by afinar (`Tokenizer::save_hf`) with Hugging Face.

    ~/.cache/afinar/venv/bin/python scripts/verify/tokenizer_export.py DIR CORPUS_JSON \
        [--chat CHAT_JSON --chat-key KEY]

DIR holds `tokenizer.json` and `tokenizer_config.json`. CORPUS_JSON is a fixture of
tests/fixtures/tokenizer (llama3.json, smollm2.json): `cases` of {"text", "ids"} with the ids of
the original tokenizer (for SmolLM2 the original model's, with digits split one by one, not
transformers' GGUF ids; a case may carry `decoded`, the text decoding gives back when the
tokenizer normalizes, as Qwen3's NFC does), and optionally `vocab_size`, `bos_id`, `eos_id`,
`pad_id` and `with_bos` ({"text", "ids"} with BOS first).

Checked, with `tokenizers.Tokenizer.from_file(DIR/tokenizer.json)` and
`transformers.AutoTokenizer.from_pretrained(DIR)`:
  - every case encodes (without special tokens) to its ids, and decodes back to its text;
  - encoding with special tokens puts BOS first exactly when tokenizer_config.json says
    `add_bos_token` (and never EOS);
  - the fixture's vocabulary size, BOS and EOS ids, and `with_bos`;
  - with --chat: every case of CHAT_JSON[KEY] ({"messages", "add_generation_prompt", "text",
    "ids"}, and `enable_thinking` when not null) renders to its text with `apply_chat_template`
    and encodes to its ids.

Prints one JSON object on stdout: {"ok": bool, "problems": [...], "checked": {...}}. Exits 1 when
a check fails.
"""

import argparse
import json
import os
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("corpus")
    ap.add_argument("--chat", help="chat fixture (tests/fixtures/tokenizer/chat.json)")
    ap.add_argument("--chat-key", help="which list of the chat fixture to check")
    args = ap.parse_args()
    if bool(args.chat) != bool(args.chat_key):
        ap.error("--chat and --chat-key go together")

    problems = []
    checked = {"cases": 0, "chat_cases": 0}

    def check(ok, what):
        if not ok:
            problems.append(what)

    with open(args.corpus, encoding="utf-8") as f:
        corpus = json.load(f)
    with open(os.path.join(args.dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    add_bos = bool(config.get("add_bos_token", False))

    raw = Tokenizer.from_file(os.path.join(args.dir, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(args.dir)
    checked["transformers_class"] = type(auto).__name__
    checked["add_bos_token"] = add_bos

    bos_id = auto.bos_token_id
    eos_id = auto.eos_token_id
    if "bos_id" in corpus:
        check(bos_id == corpus["bos_id"], f"bos_token_id {bos_id}, fixture {corpus['bos_id']}")
    if "eos_id" in corpus:
        check(eos_id == corpus["eos_id"], f"eos_token_id {eos_id}, fixture {corpus['eos_id']}")
    if "pad_id" in corpus:
        check(auto.pad_token_id == corpus["pad_id"], f"pad_token_id {auto.pad_token_id}, fixture {corpus['pad_id']}")
    if "vocab_size" in corpus:
        n = corpus["vocab_size"]
        check(len(auto) == n, f"len(AutoTokenizer) {len(auto)}, fixture vocab_size {n}")
        check(
            raw.get_vocab_size(with_added_tokens=True) == n,
            f"tokenizers vocab size {raw.get_vocab_size(with_added_tokens=True)}, fixture {n}",
        )
    if config.get("bos_token") is not None:
        check(auto.bos_token == config["bos_token"], f"bos_token {auto.bos_token!r}")
        check(raw.token_to_id(config["bos_token"]) == bos_id, "tokenizers disagrees on the BOS id")
    if config.get("eos_token") is not None:
        check(auto.eos_token == config["eos_token"], f"eos_token {auto.eos_token!r}")

    prefix = [bos_id] if add_bos else []
    for case in corpus["cases"]:
        text, want = case["text"], case["ids"]
        decoded = case.get("decoded", text)
        checked["cases"] += 1
        got = raw.encode(text, add_special_tokens=False).ids
        check(got == want, f"tokenizers {text!r}: want {want}, got {got}")
        check(raw.decode(want, skip_special_tokens=False) == decoded, f"tokenizers decode {text!r}")
        got = auto(text, add_special_tokens=False)["input_ids"]
        check(got == want, f"transformers {text!r}: want {want}, got {got}")
        got = auto.encode(text)
        check(got == prefix + want, f"transformers with specials {text!r}: want {prefix + want}, got {got}")
        got = raw.encode(text).ids
        check(got == prefix + want, f"tokenizers with specials {text!r}: want {prefix + want}, got {got}")
        dec = auto.decode(want, skip_special_tokens=False)
        check(dec == decoded, f"transformers decode {text!r}: got {dec!r}")
    if "with_bos" in corpus:
        case = corpus["with_bos"]
        got = [bos_id] + auto.encode(case["text"], add_special_tokens=False)
        check(got == case["ids"], f"with_bos: want {case['ids']}, got {got}")
        checked["with_bos"] = True

    if args.chat:
        with open(args.chat, encoding="utf-8") as f:
            chat = json.load(f)
        for case in chat[args.chat_key]:
            checked["chat_cases"] += 1
            agp = case["add_generation_prompt"]
            kwargs = {} if case.get("enable_thinking") is None else {"enable_thinking": case["enable_thinking"]}
            out = auto.apply_chat_template(case["messages"], tokenize=False, add_generation_prompt=agp, **kwargs)
            check(out == case["text"], f"chat (add_generation_prompt={agp}): want {case['text']!r}, got {out!r}")
            got = auto(out, add_special_tokens=False)["input_ids"]
            check(got == case["ids"], f"chat ids (add_generation_prompt={agp}): want {case['ids']}, got {got}")

    print(json.dumps({"ok": not problems, "problems": problems[:50], "checked": checked}, ensure_ascii=False))
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
