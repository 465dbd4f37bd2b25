"""Request bodies follow the plain OpenAI completions API."""

from __future__ import annotations

import json

import pytest

from banaserve.bench.client import ClientConfig, base_url, encode_body
from banaserve.bench.prompts import PromptBuilder, PromptConfig
from banaserve.bench.spec import BenchError, RequestSpec

SPEC = RequestSpec(index=3, arrival_s=0.0, input_len=17, output_len=9)


def test_token_id_body():
    body = json.loads(encode_body(SPEC, ClientConfig("http://h"), "m", PromptBuilder(PromptConfig())))
    assert body["model"] == "m" and body["max_tokens"] == 9 and body["temperature"] == 0
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True
    assert len(body["prompt"]) == 17 and all(isinstance(t, int) for t in body["prompt"])


def test_strict_server_and_text_body():
    cfg = ClientConfig("http://h", ignore_eos=False, prompt_text=True)
    body = json.loads(encode_body(SPEC, cfg, "m", PromptBuilder(PromptConfig(text=True))))
    assert "ignore_eos" not in body
    assert isinstance(body["prompt"], str) and len(body["prompt"].split()) == 17


def test_base_url():
    assert base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert base_url("https://api.example.com/v1") == "https://api.example.com"
    with pytest.raises(BenchError):
        base_url("127.0.0.1:8000")
