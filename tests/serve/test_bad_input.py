"""Bad requests over real HTTP: a 4xx with an OpenAI error body, and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.server_proc import MODEL_NAME as MODEL

GOOD = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0.0}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def body(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def chat_body(**changes) -> bytes:
    return json.dumps({**CHAT, **changes}).encode()


def without(key: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD.items() if k != key}).encode()


# (id, path, raw body, status, param the error must name (None: not checked), code (None: not checked))
CASES = [
    ("malformed-json", "/v1/completions", b'{"model": "tiny-llama", "prompt": ', 400, None, None),
    ("not-an-object", "/v1/completions", b"[1, 2, 3]", 400, None, None),
    ("invalid-utf8", "/v1/completions", b'{"model": "\xff\xfe"}', 400, None, None),
    ("deeply-nested", "/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400, None, None),
    ("nan", "/v1/completions", body().replace(b'"temperature": 0.0', b'"temperature": NaN'), 400,
     "temperature", None),
    ("missing-model", "/v1/completions", without("model"), 400, "model", None),
    ("missing-prompt", "/v1/completions", without("prompt"), 400, "prompt", None),
    ("max-tokens-string", "/v1/completions", body(max_tokens="5"), 400, "max_tokens", None),
    ("max-tokens-float", "/v1/completions", body(max_tokens=5.0), 400, "max_tokens", None),
    ("temperature-bool", "/v1/completions", body(temperature=True), 400, "temperature", None),
    ("temperature-range", "/v1/completions", body(temperature=7.5), 400, "temperature", None),
    ("prompt-object", "/v1/completions", body(prompt={"text": "hi"}), 400, "prompt", None),
    ("prompt-bools", "/v1/completions", body(prompt=[True, False]), 400, "prompt", None),
    ("stop-ints", "/v1/completions", body(stop=[1, 2]), 400, "stop", None),
    ("seed-overflow", "/v1/completions", body(seed=2**70), 400, "seed", None),
    ("top-k-overflow", "/v1/completions", body(top_k=2**40), 400, "top_k", None),
    ("unknown-field", "/v1/completions", body(frobnicate=1), 400, "frobnicate", None),
    ("empty-prompt", "/v1/completions", body(prompt=""), 400, "prompt", None),
    ("token-out-of-vocab", "/v1/completions", body(prompt=[1, 2, 10**6]), 400, None, None),
    ("two-prompts", "/v1/completions", body(prompt=["a", "b"]), 400, "prompt", None),
    ("prompt-too-long", "/v1/completions", body(prompt=[7] * 2048), 400, "prompt", "context_length_exceeded"),
    ("text-prompt-too-long", "/v1/completions", body(prompt="hello " * 5000), 400, "prompt",
     "context_length_exceeded"),
    ("max-tokens-zero", "/v1/completions", body(max_tokens=0), 400, "max_tokens", None),
    ("max-tokens-negative", "/v1/completions", body(max_tokens=-3), 400, "max_tokens", None),
    ("max-tokens-huge", "/v1/completions", body(max_tokens=10**9), 400, "max_tokens",
     "context_length_exceeded"),
    ("max-tokens-past-context", "/v1/completions", body(prompt=[7] * 2000, max_tokens=49), 400, "max_tokens",
     "context_length_exceeded"),
    ("unknown-model", "/v1/completions", body(model="gpt-5"), 404, "model", "model_not_found"),
    ("n-2", "/v1/completions", body(n=2), 400, "n", None),
    ("logprobs", "/v1/completions", body(logprobs=1), 400, "logprobs", None),
    ("echo", "/v1/completions", body(echo=True), 400, "echo", None),
    ("penalty", "/v1/completions", body(presence_penalty=1.0), 400, "presence_penalty", None),
    ("stream-options-without-stream", "/v1/completions", body(stream_options={"include_usage": True}), 400,
     "stream_options", None),
    ("stream-bad-input", "/v1/completions", body(stream=True, max_tokens=0), 400, "max_tokens", None),
    ("chat-missing-messages", "/v1/chat/completions", json.dumps({"model": MODEL}).encode(), 400,
     "messages", None),
    ("chat-empty-messages", "/v1/chat/completions", chat_body(messages=[]), 400, "messages", None),
    ("chat-messages-string", "/v1/chat/completions", chat_body(messages="hi"), 400, "messages", None),
    ("chat-bad-role", "/v1/chat/completions", chat_body(messages=[{"role": "wizard", "content": "x"}]), 400,
     "messages[0].role", None),
    ("chat-image-part", "/v1/chat/completions",
     chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     400, None, None),
    ("chat-logprobs", "/v1/chat/completions", chat_body(logprobs=True), 400, "logprobs", None),
    ("chat-max-tokens-huge", "/v1/chat/completions", chat_body(max_tokens=4096), 400, "max_tokens",
     "context_length_exceeded"),
    ("chat-unknown-model", "/v1/chat/completions", chat_body(model="nope"), 404, "model", "model_not_found"),
    ("chat-stream-n-3", "/v1/chat/completions", chat_body(n=3, stream=True), 400, "n", None),
]


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in r.text
    return err


def assert_still_serving(server) -> None:
    r = httpx.post(server.base_url + "/v1/completions", json=GOOD, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_a_clean_4xx(server, case):
    assert server.model_name == MODEL
    _, path, raw, status, param, code = case
    r = httpx.post(server.base_url + path, content=raw, headers={"content-type": "application/json"},
                   timeout=60)
    err = assert_openai_error(r, status)
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    assert_still_serving(server)


def test_10mb_body_is_413(server):
    raw = b'{"model": "tiny-llama", "prompt": "' + b"a" * (10 << 20) + b'"}'
    r = httpx.post(server.base_url + "/v1/completions", content=raw, timeout=60)
    assert assert_openai_error(r, 413)["code"] == "request_too_large"
    assert_still_serving(server)


def test_chunked_body_over_the_limit_is_413(server):
    """No Content-Length to check: the server must count bytes as they arrive."""

    def chunks():
        yield b'{"model": "tiny-llama", "prompt": "'
        for _ in range(10):
            yield b"a" * (1 << 20)
        yield b'"}'

    r = httpx.post(server.base_url + "/v1/completions", content=chunks(), timeout=60)
    assert "content-length" not in r.request.headers
    assert_openai_error(r, 413)
    assert_still_serving(server)


def test_unknown_route_and_wrong_method(server):
    assert_openai_error(httpx.get(server.base_url + "/v1/engines", timeout=10), 404)
    assert_openai_error(httpx.get(server.base_url + "/v1/completions", timeout=10), 405)
    assert_openai_error(httpx.get(server.base_url + "/v1/models/gpt-5", timeout=10), 404)
    assert_still_serving(server)
