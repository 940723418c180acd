"""Drives a running `afinar serve` with the official `openai` client (and the httpx it is built on,
for bodies the client cannot send). Reads a JSON file (argv[1]) with the server's address, its API
key and the answers `afinar generate` gave; any mismatch raises. Prints one line per check."""

import concurrent.futures as cf
import json
import sys

import openai

try:  # openai 3.x is built on httpx2, older releases on httpx
    import httpx2 as httpx
except ImportError:
    import httpx
from openai import OpenAI

cfg = json.load(open(sys.argv[1]))
base_url, key = cfg["base_url"], cfg["api_key"]
prompt, max_tokens = cfg["prompt"], cfg["max_tokens"]
chat_expected = cfg["chat"]  # model name -> greedy chat answer
base = cfg["models"][0]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)


def say(msg):
    print(msg, flush=True)


def chat(model, **kw):
    args = {"temperature": 0, "max_tokens": max_tokens, **kw}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **args)


def stream_text(stream):
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            delta = getattr(c, "delta", None)
            if delta is not None:
                if delta.role:
                    roles.append(delta.role)
                text += delta.content or ""
            else:
                text += c.text or ""
            if c.finish_reason:
                finish = c.finish_reason
    return text, finish, usage, roles


# /v1/models lists the base and each adapter.
ids = [m.id for m in client.models.list()]
assert ids == cfg["models"], ids
say(f"models: {ids}")

# Greedy chat per model equals `afinar generate --chat [--adapter DIR]`.
for model, want in chat_expected.items():
    r = chat(model)
    got = r.choices[0].message.content
    assert got == want, (model, got, want)
    assert r.choices[0].finish_reason in ("stop", "length"), r
    assert r.usage.completion_tokens <= max_tokens and r.usage.prompt_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    say(f"chat {model}: {got!r} ({r.choices[0].finish_reason})")

# Streaming, with usage in a last chunk.
text, finish, usage, roles = stream_text(chat(base, stream=True, stream_options={"include_usage": True}))
assert text == chat_expected[base], (text, chat_expected[base])
assert roles == ["assistant"] and finish in ("stop", "length") and usage is not None, (roles, finish, usage)
say(f"stream: {text!r}, usage {usage.completion_tokens}")

# A stop string spanning tokens in the middle of the answer.
words = chat_expected[base].split(" ")
assert len(words) > 4, words
stop = words[2] + " " + words[3][:2]
cut = chat_expected[base][: chat_expected[base].index(stop)]
r = chat(base, stop=[stop])
assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop", r
text, finish, _, _ = stream_text(chat(base, stop=stop, stream=True))
assert text == cut and finish == "stop", (text, finish)
say(f"stop {stop!r}: {cut!r}")

# Text completions equal `afinar generate` without --chat.
r = client.completions.create(model=base, prompt=cfg["text_prompt"], max_tokens=max_tokens, temperature=0)
assert r.choices[0].text == cfg["text"], (r.choices[0].text, cfg["text"])
text, _, _, _ = stream_text(
    client.completions.create(model=base, prompt=cfg["text_prompt"], max_tokens=max_tokens, temperature=0, stream=True)
)
assert text == cfg["text"], (text, cfg["text"])
say(f"completion: {text!r}")

# Eight requests at once over the three models, streamed and not: each equals its own answer.
jobs = [(list(chat_expected)[i % len(chat_expected)], i % 2 == 0) for i in range(8)]


def run(job):
    model, stream = job
    if stream:
        return stream_text(chat(model, stream=True))[0]
    return chat(model).choices[0].message.content


with cf.ThreadPoolExecutor(8) as pool:
    for (model, stream), got in zip(jobs, pool.map(run, jobs)):
        assert got == chat_expected[model], (model, stream, got)
say("concurrent: 8 answers equal")


def expect_error(cls, status, param=None, code=None, fn=None):
    try:
        fn()
    except cls as e:
        assert e.status_code == status, (e.status_code, e)
        body = e.body.get("error", e.body) if isinstance(e.body, dict) else e.body
        assert isinstance(body, dict) and body.get("message"), body
        if param is not None:
            assert body.get("param") == param, body
        if code is not None:
            assert body.get("code") == code, body
        say(f"{status} {cls.__name__}: {body['message']}")
        return
    raise AssertionError(f"expected {cls.__name__}")


expect_error(openai.NotFoundError, 404, "model", "model_not_found", lambda: chat("no-such-model"))
expect_error(openai.BadRequestError, 400, "n", fn=lambda: chat(base, n=2))
expect_error(openai.BadRequestError, 400, "temperature", fn=lambda: chat(base, temperature=5))
expect_error(openai.BadRequestError, 400, "messages", "context_length_exceeded", lambda: chat(base, max_tokens=10**6))
wrong = OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0)
expect_error(openai.AuthenticationError, 401, code="invalid_api_key", fn=lambda: wrong.models.list())

# Bodies the client would not send.
headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
r = httpx.post(f"{base_url}/chat/completions", content=b'{"model": ', headers=headers, timeout=60)
assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
r = httpx.post(f"{base_url}/completions", content=b'{"prompt": "' + b"a" * cfg["oversize"] + b'"}', headers=headers, timeout=60)
assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
say("raw: 400 invalid_json, 413 request_too_large")
print("serve_openai: all checks passed")
