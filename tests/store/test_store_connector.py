"""Prefixes computed on one engine and loaded from the local store on another give HF's tokens,
through a real store server process; eviction and a store killed mid-run cost recomputes only."""

from __future__ import annotations

import pytest

from banaserve import LLM, SamplingParams
from banaserve.store.connector import StoreConnector
from banaserve.transfer.layout import KVLayout, TransferRefused
from tests.engine.hf_reference import hf_greedy, load_hf
from tests.engine.test_llm import ARCHS, make_prompts
from tests.store.store_proc import StoreProcess, stats

MAX_NEW = 6
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
BLOCK = 8


OPEN: list[StoreConnector] = []


@pytest.fixture(autouse=True)
def close_connectors():
    yield
    while OPEN:
        OPEN.pop().close()


def engine(path: str, store: StoreProcess) -> tuple[LLM, StoreConnector]:
    llm = LLM(path, dtype="float32", device="cpu", block_size=BLOCK, max_num_batched_tokens=64, num_kv_blocks=600)
    e = llm.engine
    layout = KVLayout.of(e.fingerprint, e.runner.kv_caches)
    conn = StoreConnector(store.client(layout), e.runner.kv_caches, BLOCK, e.blocks.root_hash)
    e.set_kv_connector(conn)
    OPEN.append(conn)
    return llm, conn


def loadable(prompt: list[int]) -> int:
    return (len(prompt) - 1) // BLOCK * BLOCK


def no_leak(llm: LLM) -> bool:
    b = llm.engine.blocks
    return b.num_used_blocks == 0 and b.num_free_blocks == b.pool.num_blocks


@pytest.fixture(scope="module", params=ARCHS)
def case(request, make_checkpoint, tmp_path_factory):
    path = make_checkpoint(request.param)
    hf = load_hf(path)
    prompts = make_prompts(hf.config.vocab_size, seed=20 + ARCHS.index(request.param))[:16]
    return path, prompts, [hf_greedy(hf, p, MAX_NEW) for p in prompts], tmp_path_factory.mktemp("store")


def test_prefix_computed_elsewhere_loads_from_the_store(case):
    path, prompts, refs, tmp = case
    store = StoreProcess(str(tmp))
    try:
        writer, wconn = engine(path, store)
        outs = writer.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
        assert [o.token_ids for o in outs] == refs and wconn.counters.hit_tokens == 0
        assert stats(wconn.client).puts == wconn.counters.saved_blocks > 0
        reader, rconn = engine(path, store)  # another engine: nothing in its own prefix cache
        outs = reader.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
        assert [o.token_ids for o in outs] == refs
        assert [o.num_cached_tokens for o in outs] == [loadable(p) for p in prompts]
        assert rconn.counters.hit_tokens > 0 and no_leak(reader)
        assert not stats(rconn.client).used_slots - stats(rconn.client).puts  # nothing evicted here
    finally:
        store.stop()


def test_eviction_mid_run_recomputes(case):
    path, prompts, refs, tmp = case
    # a store of a few dozen blocks: later prompts' puts evict earlier prompts' blocks, so some
    # lookups find blocks that are gone by the time they are leased
    store = StoreProcess(str(tmp), capacity_gb=0.0003, high_watermark=0.9, low_watermark=0.3)
    try:
        writer, _ = engine(path, store)
        writer.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
        reader, rconn = engine(path, store)
        outs = reader.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
        assert [o.token_ids for o in outs] == refs and no_leak(reader)
        assert stats(rconn.client).evictions > 0
    finally:
        store.stop()


def test_store_killed_mid_run_costs_recomputes_only(case):
    path, prompts, refs, tmp = case
    store = StoreProcess(str(tmp))
    writer, _ = engine(path, store)
    writer.generate(prompt_token_ids=prompts, sampling_params=GREEDY)
    reader, rconn = engine(path, store)
    rconn.client.timeout_s = 0.2
    e = reader.engine
    for p in prompts:
        e.add_request(params=GREEDY, prompt_token_ids=p)
    done, steps = {}, 0
    while e.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in e.step() if o.finished})
        steps += 1
        if steps == 3:
            store.kill()
    assert [done[str(i)] for i in range(len(prompts))] == refs and no_leak(reader)
    assert not rconn.client.available  # it noticed, and stopped asking


def test_an_engine_with_another_layout_is_refused(case, tiny_llama):
    path, _, _, tmp = case
    store = StoreProcess(str(tmp))
    try:
        engine(path, store)
        other = KVLayout("00" * 16, 4, BLOCK, 2, 16, "float32", 10)
        with pytest.raises(TransferRefused):
            store.client(other)
    finally:
        store.stop()
