"""The KV seam's load half: blocks loaded from elsewhere give HF's tokens; failed loads recompute.

A DictConnector (dict_connector.py) first saves every full block an engine computes, then a
fresh engine (nothing in its own prefix cache) loads 0%, 50% or 100% of each prompt's stored
blocks through `num_loadable_tokens` / `load_planned` / `before_layer`, under chunked prefill.
"""

from __future__ import annotations

import pytest

from banaserve import LLM, SamplingParams
from tests.engine.dict_connector import DictConnector
from tests.engine.hf_reference import hf_greedy, load_hf
from tests.engine.test_llm import ARCHS, make_prompts

MAX_NEW = 8
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
BLOCK = 8


@pytest.fixture(scope="module", params=ARCHS)
def case(request, make_checkpoint):
    path = make_checkpoint(request.param)
    hf = load_hf(path)
    prompts = make_prompts(hf.config.vocab_size, seed=10 + ARCHS.index(request.param))
    refs = [hf_greedy(hf, p, MAX_NEW) for p in prompts]
    store: dict = {}
    llm, conn = engine(path, store, share=0.0)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
    assert [o.token_ids for o in outs] == refs and conn.loaded_tokens == 0
    assert store and all(len(layers) == llm.engine.model_config.num_layers for layers in store.values())
    return path, prompts, refs, store


def engine(path: str, store: dict, share: float, fail: set[str] = frozenset()) -> tuple[LLM, DictConnector]:
    llm = LLM(path, dtype="float32", device="cpu", block_size=BLOCK, max_num_batched_tokens=64,
              num_kv_blocks=600)
    e = llm.engine
    conn = DictConnector(e.runner.kv_caches, BLOCK, e.blocks.root_hash, store, share, fail)
    e.set_kv_connector(conn)
    return llm, conn


def loadable(prompt: list[int]) -> int:
    """Tokens of a prompt in whole stored blocks (the last token is always computed)."""
    return (len(prompt) - 1) // BLOCK * BLOCK


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_loaded_blocks_give_hf_tokens(case, share):
    path, prompts, refs, store = case
    llm, conn = engine(path, store, share)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
    assert [o.token_ids for o in outs] == refs
    # every stored block is either loaded or a hit on blocks this engine computed (shared prefixes)
    if share == 1.0:
        assert [o.num_cached_tokens for o in outs] == [loadable(p) for p in prompts]
    assert (conn.loaded_tokens > 0) == (share > 0)
    if share == 0.5:
        assert 0 < conn.loaded_tokens < sum(loadable(p) for p in prompts)
    blocks = llm.engine.blocks
    assert blocks.num_used_blocks == 0 and blocks.num_free_blocks == blocks.pool.num_blocks


def test_failed_loads_are_recomputed(case):
    path, prompts, refs, store = case
    fail = {str(i) for i in range(0, len(prompts), 2)}  # LLM names requests 0, 1, ... in order
    llm, conn = engine(path, store, 1.0, fail)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
    assert [o.token_ids for o in outs] == refs
    assert conn.num_failures == sum(1 for i, p in enumerate(prompts) if str(i) in fail and loadable(p))
    assert llm.engine.scheduler.num_preemptions == 0  # a failed load is a recompute, not a preemption
    blocks = llm.engine.blocks
    assert blocks.num_used_blocks == 0 and blocks.num_free_blocks == blocks.pool.num_blocks


def test_an_unanswered_load_waits_without_holding_the_step(case):
    """A connector that answers None at first: that request waits, the others run."""
    path, prompts, refs, store = case
    llm, conn = engine(path, store, 1.0)
    asked: dict[str, int] = {}
    answer = conn.num_loadable_tokens

    def slow(req, num_local):
        asked[req.request_id] = asked.get(req.request_id, 0) + 1
        return None if req.request_id == "0" and asked["0"] < 4 else answer(req, num_local)

    conn.num_loadable_tokens = slow
    e = llm.engine
    for p in prompts[:3]:
        e.add_request(params=GREEDY, prompt_token_ids=p)
    e.step()
    assert [r.request_id for r in e.scheduler.running] == ["1", "2"] and e.scheduler.waiting[0].request_id == "0"
    done = {}
    while e.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in e.step() if o.finished})
    assert [done[str(i)] for i in range(3)] == refs[:3] and asked["0"] == 4
