"""Every served topology through the official openai client: 32 concurrent greedy requests, half
streamed, token-identical to offline `LLM.generate` (compared on text and token counts)."""

import asyncio
import random

import httpx
import openai
import pytest

from banaserve import LLM, SamplingParams
from tests.serve.server_proc import NUM_KV_BLOCKS, start_server

TOPOLOGIES = {
    "colocated-2": ("--mode", "colocated", "--instances", "2"),
    "disagg-1p1d-shm": ("--mode", "disagg", "--prefill", "1", "--decode", "1", "--transfer", "shm"),
    "disagg-1p1d-tcp": ("--mode", "disagg", "--prefill", "1", "--decode", "1", "--transfer", "tcp"),
    "disagg-2p2d-shm": ("--mode", "disagg", "--prefill", "2", "--decode", "2", "--transfer", "shm"),
    "disagg-2p2d-tcp": ("--mode", "disagg", "--prefill", "2", "--decode", "2", "--transfer", "tcp"),
}
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def workload(tiny_llama):
    rng = random.Random(11)
    shared = [rng.randrange(3, 1000) for _ in range(40)]
    prompts = [[rng.randrange(3, 1000) for _ in range(rng.randint(1, 120))] for _ in range(24)]
    prompts += [shared + [rng.randrange(3, 1000) for _ in range(rng.randint(1, 20))] for _ in range(8)]
    llm = LLM(tiny_llama, num_kv_blocks=NUM_KV_BLOCKS)
    refs = llm.generate(prompt_token_ids=prompts,
                        sampling_params=SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True))
    return prompts, refs


async def complete(client: openai.AsyncOpenAI, model: str, prompt: list[int], stream: bool) -> tuple[str, int]:
    kwargs = dict(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, extra_body={"ignore_eos": True})
    if not stream:
        r = await client.completions.create(**kwargs)
        return r.choices[0].text, r.usage.completion_tokens
    chunks = [c async for c in await client.completions.create(**kwargs, stream=True,
                                                                stream_options={"include_usage": True})]
    usage = [c.usage.completion_tokens for c in chunks if c.usage]
    return "".join(c.choices[0].text for c in chunks if c.choices), usage[-1]


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_concurrent_greedy_identical_to_offline(tiny_llama, tmp_path, workload, topology):
    prompts, refs = workload
    server = start_server(tiny_llama, str(tmp_path), *TOPOLOGIES[topology])
    try:
        async def run_all():
            client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
            return await asyncio.gather(*(complete(client, server.model_name, p, i % 2 == 0)
                                          for i, p in enumerate(prompts)))

        results = asyncio.run(run_all())
        assert [text for text, _ in results] == [r.text for r in refs]
        assert all(n == MAX_TOKENS for _, n in results)
        state = httpx.get(server.base_url + "/v1/cluster", timeout=10).json()
        if topology.startswith("disagg"):
            assert state["transfers"]["ok"] == len(prompts)
        assert all(i["alive"] for i in state["instances"])
    finally:
        server.stop()
