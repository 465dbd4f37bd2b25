import pytest

from banaserve.engine.request import Request
from banaserve.engine.sampling_params import SamplingParams
from banaserve.sim.instance import InstanceConfig, SimInstance
from tests.sim.helpers import LinearCost


def request(rid: str, prompt: list[int], max_tokens: int) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def drive(inst: SimInstance, now: float = 0.0) -> tuple[float, dict[str, list[float]]]:
    """Step until idle, the way LLMEngine.step loops; returns (end time, token times per request)."""
    times: dict[str, list[float]] = {}
    while True:
        end = inst.begin_step(now)
        if end is None:
            return now, times
        for req in inst.end_step(end):
            times.setdefault(req.request_id, []).append(end)
            inst.append_token(req)
        now = end


def test_prefill_then_decode_until_max_tokens():
    inst = SimInstance(0, "unified", InstanceConfig(num_blocks=100), LinearCost())
    req = request("a", list(range(3, 103)), 5)
    inst.add(req)
    end, times = drive(inst)
    assert len(times["a"]) == 5 and req.finished and req.finish_reason == "length"
    assert times["a"][0] == pytest.approx(0.010 + 0.100)  # one prefill step of 100 tokens
    assert end == pytest.approx(0.110 + 4 * 0.012)
    assert inst.blocks.num_used_blocks == 0  # finished requests free their blocks


def test_context_limit_stops_early():
    inst = SimInstance(0, "unified", InstanceConfig(num_blocks=100, max_model_len=105), LinearCost())
    req = request("a", list(range(3, 103)), 50)
    inst.add(req)
    drive(inst)
    assert req.num_output_tokens == 5 and req.finish_reason == "length"


def test_prefix_cache_hit_skips_computed_blocks():
    inst = SimInstance(0, "unified", InstanceConfig(num_blocks=100), LinearCost())
    prompt = list(range(3, 103))
    inst.add(request("a", prompt, 2))
    t, _ = drive(inst)
    b = request("b", prompt, 2)
    inst.add(b)
    _, times = drive(inst, t)
    assert b.num_cached_tokens == 96  # 6 full blocks of 16; the last token is always computed
    assert times["b"][0] - t == pytest.approx(0.010 + 0.001 * 4)


def test_preemption_under_memory_pressure_recomputes_and_finishes():
    inst = SimInstance(0, "unified", InstanceConfig(num_blocks=12), LinearCost())
    reqs = [request(str(i), list(range(3 + i, 67 + i)), 60) for i in range(2)]  # 64 + 60 tokens each
    for r in reqs:
        inst.add(r)
    drive(inst)
    assert inst.scheduler.num_preemptions > 0
    assert all(r.finished and r.num_output_tokens == 60 for r in reqs)


def test_fits_rejects_what_the_engine_rejects():
    inst = SimInstance(0, "unified", InstanceConfig(num_blocks=4, max_model_len=100), LinearCost())
    assert "context" in inst.fits(100, 1)
    assert "KV memory" in inst.fits(50, 40)  # 90 tokens need 6 blocks of 16
    assert inst.fits(30, 10) is None


def test_stats_count_queued_prefill_and_memory():
    inst = SimInstance(3, "prefill", InstanceConfig(num_blocks=100), LinearCost())
    inst.add(request("a", list(range(3, 103)), 5))
    s = inst.stats()
    assert (s.instance_id, s.role, s.num_waiting, s.inflight_prefill_tokens) == (3, "prefill", 1, 100)
    assert s.kv_blocks_used == 0
    inst.begin_step(0.0)
    s = inst.stats()
    assert (s.num_running, s.kv_blocks_used) == (1, 7)
