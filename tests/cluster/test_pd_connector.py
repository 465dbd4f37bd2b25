"""The prefill-side connector in one process: chunked prefill pushes exactly the request's KV."""

import os

from banaserve.cluster.decode_side import DecodeSide
from banaserve.cluster.instance import install_kv_caches
from banaserve.cluster.messages import Admit, PushSpec, Reserve
from banaserve.cluster.pd_connector import PushConnector
from banaserve.engine.config import EngineConfig
from banaserve.engine.llm_engine import LLMEngine
from banaserve.engine.sampling_params import SamplingParams
from banaserve.transfer.layout import KVLayout
from banaserve.transfer.shm_kv import ShmKVSegment, segment_name


def engine(model: str, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model, dtype="float32", device="cpu", block_size=8, num_kv_blocks=64, **kw))


def run(e: LLMEngine) -> list:
    outs = []
    while e.has_unfinished_requests():
        outs += e.step()
    return outs


def test_chunked_prefill_push_then_decode_matches_local(tiny_llama):
    prompt = [(i * 37) % 900 + 3 for i in range(45)]
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    local = engine(tiny_llama)
    local.add_request("x", params=greedy, prompt_token_ids=prompt)
    want = [o for o in run(local) if o.finished][0].token_ids

    dec = engine(tiny_llama)
    name = segment_name(os.getpid(), "conn-test")
    seg = ShmKVSegment.create(name, KVLayout.of(dec.fingerprint, dec.runner.kv_caches))
    try:
        install_kv_caches(dec, seg.tensors)
        side = DecodeSide(dec.core, None, 1.0)
        # the decode side already computed the first 16 tokens (a prefix-cache hit): never pushed
        dec.add_request("warm", params=SamplingParams(max_tokens=1), prompt_token_ids=prompt[:20])
        run(dec)
        reserved = side.reserve(Reserve(1, "x", prompt))
        assert reserved.ok and reserved.skip_tokens == 16 and len(reserved.blocks) == 6

        pre = engine(tiny_llama, max_num_batched_tokens=12)  # 45 tokens: four chunks of prefill
        conn = PushConnector(pre.runner.kv_caches, KVLayout.of(pre.fingerprint, pre.runner.kv_caches))
        pre.set_kv_connector(conn)
        conn.add("x", PushSpec(1, "shm", name, reserved.blocks, reserved.skip_tokens), len(prompt))
        pre.core.add("x", prompt, SamplingParams(max_tokens=1, temperature=0.0))
        first = pre.core.step()
        while pre.has_unfinished_requests():
            first += pre.core.step()
        assert conn.results == {"x": None} and first[-1].new_token_ids == want[:1]
        # chunks [0,12) [12,24) [24,36) [36,45): blocks 2 | 3 4 | 4 5 (block 4 again once complete)
        assert conn.bytes_pushed == 4 * conn.layout.block_bytes * (1 + 2 + 2)
        assert "x" not in pre.blocks.block_tables  # freed on finish: every push was done by then
        assert side.admit(Admit(1, "x", prompt, greedy, want[:1])) is None
        rest = []
        while dec.has_unfinished_requests():
            rest += [t for o in dec.core.step() for t in o.new_token_ids]
        assert want[:1] + rest == want
        assert dec.blocks.num_used_blocks == 0 and pre.blocks.num_used_blocks == 0
        conn.close()
    finally:
        seg.close()
        seg.unlink()


def test_connector_may_keep_blocks_of_finished_requests(tiny_llama):
    """The scheduler-side hook: blocks stay held until the connector releases them."""
    from banaserve.engine.kv_connector import KVConnector

    class Keep(KVConnector):
        def __init__(self):
            self.layers: list[int] = []
            self.kept: list[str] = []

        def after_layer(self, layer: int) -> None:
            self.layers.append(layer)

        def request_finished(self, req) -> bool:
            self.kept.append(req.request_id)
            return True

    e = engine(tiny_llama)
    conn = Keep()
    e.set_kv_connector(conn)
    e.add_request("k", params=SamplingParams(max_tokens=2, temperature=0.0), prompt_token_ids=list(range(3, 30)))
    run(e)
    assert conn.kept == ["k"] and conn.layers[:4] == [0, 1, 2, 3]
    assert e.blocks.num_used_blocks == 4  # 28 tokens of KV in blocks of 8, still held
    e.blocks.free("k")  # the connector releases them
    assert e.blocks.num_used_blocks == 0
