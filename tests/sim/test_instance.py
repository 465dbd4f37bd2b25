"""A simulated instance alone: the live InstanceHandler and engine core on a cost-model runner."""

import pytest

from banaserve.cluster import messages as m
from banaserve.engine.sampling_params import SamplingParams
from banaserve.sim.instance import InstanceConfig, SimInstance
from tests.sim.helpers import LinearCost


class Rig:
    """One instance whose messages are collected; `now` is its clock."""

    def __init__(self, role: str = "unified", instance_id: int = 0, **cfg):
        self.now = 0.0
        self.sent: list[object] = []
        self.inst = SimInstance(instance_id, role, InstanceConfig(**{"num_blocks": 100, **cfg}), LinearCost(),
                                lambda idx, msg: self.sent.append(msg), lambda: self.now)

    def add(self, rid: str, prompt: list[int], max_tokens: int) -> None:
        self.inst.deliver(m.Add(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True)))

    def drive(self) -> dict[str, list[float]]:
        """Step until idle, as the live loop does; token times per request."""
        times: dict[str, list[float]] = {}
        while True:
            start = self.now
            end = self.inst.begin_step(start)
            if end is None:
                return times
            self.now = end
            self.inst.end_step(end, start)
            for msg in self.sent:
                for o in msg.items if isinstance(msg, m.Outputs) else ():
                    times.setdefault(o.request_id, []).extend([end] * len(o.new_token_ids))
            self.sent.clear()


def test_prefill_then_decode_until_max_tokens():
    rig = Rig()
    rig.add("a", list(range(3, 103)), 5)
    times = rig.drive()
    assert len(times["a"]) == 5
    assert times["a"][0] == pytest.approx(0.010 + 0.100)  # one prefill step of 100 tokens
    assert rig.now == pytest.approx(0.110 + 4 * 0.012)
    assert rig.inst.blocks.num_used_blocks == 0 and not rig.inst.core.requests  # finished and freed


def test_context_limit_stops_early():
    rig = Rig(max_model_len=105)
    rig.add("a", list(range(3, 103)), 2)
    rig.inst.core.requests["a"].params.max_tokens = 50  # past the context: the stop rule cuts it
    assert len(rig.drive()["a"]) == 5  # 100 + 5 tokens fill the context


def test_prefix_cache_hit_skips_computed_blocks():
    rig = Rig()
    prompt = list(range(3, 103))
    rig.add("a", prompt, 2)
    rig.drive()
    t = rig.now
    rig.add("b", prompt, 2)
    assert rig.inst.core.requests["b"] is not None
    times = rig.drive()
    # 6 full blocks of 16 hit the cache; the last token is always computed
    assert times["b"][0] - t == pytest.approx(0.010 + 0.001 * 4)


def test_preemption_under_memory_pressure_recomputes_and_finishes():
    rig = Rig(num_blocks=12)
    for i in range(2):
        rig.add(str(i), list(range(3 + i, 67 + i)), 60)  # 64 + 60 tokens each
    times = rig.drive()
    assert rig.inst.scheduler.num_preemptions > 0
    assert [len(times[str(i)]) for i in range(2)] == [60, 60]


def test_fits_rejects_what_the_engine_rejects():
    inst = Rig(num_blocks=4, max_model_len=100).inst
    assert "context" in inst.fits(100, 1)
    assert "KV memory" in inst.fits(50, 40)  # 90 tokens need 6 blocks of 16
    assert inst.fits(30, 10) is None


def test_stats_count_queued_prefill_and_memory():
    rig = Rig("prefill", instance_id=3)
    rig.add("a", list(range(3, 103)), 5)
    s = rig.inst.stats()
    assert (s.instance_id, s.role, s.num_waiting, s.tokens_queued) == (3, "prefill", 1, 100)
    assert s.kv_blocks_used == 0
    rig.inst.begin_step(0.0)
    s = rig.inst.stats()
    assert (s.num_running, s.kv_blocks_used) == (1, 7)


def test_messages_during_a_step_wait_for_its_end():
    rig = Rig()
    rig.add("a", list(range(3, 103)), 5)
    end = rig.inst.begin_step(0.0)
    rig.inst.deliver(m.Abort("a", ack=True))
    assert rig.sent == [] and "a" in rig.inst.core.requests  # nothing leaves or lands mid-step
    rig.inst.end_step(end, 0.0)
    assert [type(x) for x in rig.sent] == [m.Outputs, m.Aborted] and not rig.inst.core.requests
