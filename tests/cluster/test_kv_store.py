"""A cluster with the local Global KV Cache Store: prefixes computed on one instance are loaded by
another, output identical to one offline engine; stats and metrics count the store's hits."""

from __future__ import annotations

import random

import pytest

from banaserve.engine.llm import LLM
from banaserve.engine.sampling_params import SamplingParams
from tests.cluster.cluster_harness import ENGINE, Harness, cluster_config

SHAPES = {"colocated-2": dict(mode="colocated", instances=2),
          "disagg-2p1d": dict(mode="disagg", prefill=2, decode=1)}


def workload(seed: int = 5) -> tuple[list[list[int]], list[SamplingParams]]:
    """Groups of prompts sharing a long prefix (a multi-turn conversation's history)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(4):
        shared = [rng.randrange(3, 1000) for _ in range(rng.randrange(60, 120))]
        prompts += [shared + [rng.randrange(3, 1000) for _ in range(rng.randrange(3, 20))] for _ in range(3)]
    return prompts, [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)] * len(prompts)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_store_serves_prefixes_across_instances(tiny_llama, shape):
    prompts, params = workload()
    refs = LLM(tiny_llama, **ENGINE).generate(prompt_token_ids=prompts, sampling_params=params)
    h = Harness(cluster_config(tiny_llama, kv_store="local", kv_store_gb=0.05, routing="round-robin",
                               **SHAPES[shape]))
    try:
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, params)):  # one at a time: each turn after the last
            outs.append(h.run(h.collect(f"s{i}", p, sp))[-1])
        assert [o.token_ids for o in outs] == [r.token_ids for r in refs]
        h.quiesce()
        state = h.client.cluster_state()
        store = state["kv_store"]
        assert store["hit_tokens"] > 0 and store["saved_bytes"] > 0 and store["failed_loads"] == 0
        assert state["prefix_cache"]["hit_tokens"] >= store["hit_tokens"]
        hitters = [i for i in state["instances"] if i["stats"]["kv_store_hit_tokens"] > 0]
        assert hitters  # some instance loaded what another computed
        assert all(u == 0 for u in h.used_blocks().values())
    finally:
        h.close()
