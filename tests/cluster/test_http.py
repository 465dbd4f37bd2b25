"""End to end: `banaserve serve --mode disagg` answered through the official openai client."""

import httpx
import openai
import pytest

from banaserve import LLM, SamplingParams
from banaserve.transfer.shm_kv import list_segments
from tests.cluster.cluster_harness import running
from tests.serve.server_proc import NUM_KV_BLOCKS, start_server

PROMPTS = ["Hello world", "The quick brown fox", "def forward(self, x):", "Prefill computes the prompt"]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    srv = start_server(tiny_llama, str(tmp_path_factory.mktemp("logs")), "--mode", "disagg",
                       "--prefill", "1", "--decode", "1", "--transfer", "shm")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def reference(tiny_llama):
    llm = LLM(tiny_llama, num_kv_blocks=NUM_KV_BLOCKS)
    return llm.generate(PROMPTS, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))


def test_completions_streaming_and_not_match_offline(server, reference):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    for prompt, ref in zip(PROMPTS, reference, strict=True):
        r = client.completions.create(model=server.model_name, prompt=prompt, max_tokens=20, temperature=0.0,
                                      extra_body={"ignore_eos": True})
        assert r.choices[0].text == ref.text and r.usage.completion_tokens == 20
        stream = client.completions.create(model=server.model_name, prompt=prompt, max_tokens=20,
                                           temperature=0.0, stream=True, extra_body={"ignore_eos": True})
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]

    state = httpx.get(server.base_url + "/v1/cluster", timeout=10).json()
    assert [i["role"] for i in state["instances"]] == ["prefill", "decode"]
    assert all(i["alive"] for i in state["instances"])
    assert state["transfers"]["ok"] == 2 * len(PROMPTS) and state["transfers"]["bytes_pushed"] > 0

    # SIGTERM to the server stops its instances and unlinks their shared memory before it exits
    pids = [i["pid"] for i in state["instances"]]
    server.stop()
    assert server.proc.returncode == 0
    assert not any(running(pid) for pid in pids)
    assert not list_segments(server.proc.pid)
