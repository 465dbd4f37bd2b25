"""The official openai client against a real server: outputs identical to the offline engine."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from banaserve import SamplingParams

PROMPTS = ["Hello world", "The quick brown fox", "def forward(self, x):", "Prefill computes the prompt"]
GREEDY = {"temperature": 0.0}
NO_EOS = {"ignore_eos": True}  # extension field, sent through extra_body


def chatml(user: str) -> str:
    """The prompt our checkpoints' ChatML template renders for one user message."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def offline(llm, prompts=None, token_ids=None, max_tokens=16):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return llm.generate(prompts, params, prompt_token_ids=token_ids)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model_name]
    assert client.models.retrieve(server.model_name).id == server.model_name
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}


def test_greedy_completion_matches_offline(server, client, offline_llm):
    expected = offline(offline_llm, PROMPTS, max_tokens=12)
    for prompt, ref in zip(PROMPTS, expected, strict=True):
        r = client.completions.create(model=server.model_name, prompt=prompt, max_tokens=12,
                                      extra_body=NO_EOS, **GREEDY)
        assert r.choices[0].text == ref.text
        assert r.choices[0].finish_reason == "length"
        assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
        assert r.usage.completion_tokens == len(ref.token_ids) == 12
        assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_token_id_prompts_match_offline(server, client, offline_llm):
    prompts = [[5, 77, 300, 12, 900], [1, 2, 3]]
    expected = offline(offline_llm, token_ids=prompts, max_tokens=10)
    r = client.completions.create(model=server.model_name, prompt=prompts[0], max_tokens=10,
                                  extra_body=NO_EOS, **GREEDY)
    assert r.choices[0].text == expected[0].text
    # a list holding one token-id prompt is the same request
    r = client.completions.create(model=server.model_name, prompt=[prompts[1]], max_tokens=10,
                                  extra_body=NO_EOS, **GREEDY)
    assert r.choices[0].text == expected[1].text
    assert r.usage.prompt_tokens == 3
    # and a list holding one text prompt
    ref = offline(offline_llm, [PROMPTS[2]], max_tokens=10)[0]
    r = client.completions.create(model=server.model_name, prompt=[PROMPTS[2]], max_tokens=10,
                                  extra_body=NO_EOS, **GREEDY)
    assert r.choices[0].text == ref.text


def test_streaming_completion_matches_offline(server, client, offline_llm):
    ref = offline(offline_llm, PROMPTS[1:2], max_tokens=20)[0]
    stream = client.completions.create(model=server.model_name, prompt=PROMPTS[1], max_tokens=20, stream=True,
                                       stream_options={"include_usage": True}, extra_body=NO_EOS, **GREEDY)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(c.usage is None for c in chunks[:-1])


def test_default_max_tokens_is_16(server, client):
    r = client.completions.create(model=server.model_name, prompt="Hello", extra_body=NO_EOS, **GREEDY)
    assert r.usage.completion_tokens == 16


def test_stop_string_and_stop_token(server, client, offline_llm):
    ref = offline(offline_llm, [PROMPTS[0]], max_tokens=12)[0]
    stop = ref.text[4:7]  # a piece of what greedy decoding will produce
    r = client.completions.create(model=server.model_name, prompt=PROMPTS[0], max_tokens=12, stop=stop,
                                  extra_body=NO_EOS, **GREEDY)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == ref.text[:ref.text.find(stop)]
    r = client.completions.create(model=server.model_name, prompt=PROMPTS[0], max_tokens=12,
                                  extra_body={**NO_EOS, "stop_token_ids": [ref.token_ids[2]]}, **GREEDY)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 3


def test_chat_matches_offline(server, client, offline_llm):
    ref = offline(offline_llm, [chatml("Tell me a story")], max_tokens=10)[0]
    messages = [{"role": "user", "content": "Tell me a story"}]
    r = client.chat.completions.create(model=server.model_name, messages=messages, max_tokens=10,
                                       extra_body=NO_EOS, **GREEDY)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    stream = client.chat.completions.create(model=server.model_name, messages=messages,
                                            max_completion_tokens=10, stream=True,
                                            stream_options={"include_usage": True}, extra_body=NO_EOS,
                                            **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert chunks[-1].usage.completion_tokens == 10


def test_chat_default_max_tokens_fills_the_context(server, client, offline_llm):
    """No max_tokens in chat: the completion may use the rest of the context (here 2048 tokens)."""
    limit = offline_llm.engine.max_model_len
    words = 1
    while len(offline_llm.tokenizer.encode(chatml(" ".join(["hello"] * (words + 1))))) <= limit - 5:
        words += 1
    content = " ".join(["hello"] * words)
    room = limit - len(offline_llm.tokenizer.encode(chatml(content)))
    assert 0 < room < 20
    messages = [{"role": "user", "content": content}]
    r = client.chat.completions.create(model=server.model_name, messages=messages, extra_body=NO_EOS,
                                       **GREEDY)
    assert r.usage.completion_tokens == room
    assert r.choices[0].finish_reason == "length"


def test_32_concurrent_requests_match_offline(server, offline_llm):
    prompts = [f"{PROMPTS[i % 4]} {i}" for i in range(32)]
    max_tokens = [8 + i % 9 for i in range(32)]
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in max_tokens]
    expected = offline_llm.generate(prompts, params)

    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0,
                                     timeout=120)

        async def one(i: int):
            if i % 2:  # half of them streamed
                stream = await aclient.completions.create(model=server.model_name, prompt=prompts[i],
                                                          max_tokens=max_tokens[i], stream=True,
                                                          extra_body=NO_EOS, **GREEDY)
                return "".join([c.choices[0].text async for c in stream])
            r = await aclient.completions.create(model=server.model_name, prompt=prompts[i],
                                                 max_tokens=max_tokens[i], extra_body=NO_EOS, **GREEDY)
            return r.choices[0].text

        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await aclient.close()

    texts = asyncio.run(run())
    assert texts == [e.text for e in expected]
