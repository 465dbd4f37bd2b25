"""The PD flow (the live Router and InstanceHandler on simulated time), checked by hand."""

import dataclasses

import pytest

from banaserve.cluster import messages as m
from banaserve.engine.sampling_params import SamplingParams
from banaserve.sim.cluster import ClusterConfig
from banaserve.sim.links import Link
from tests.sim.helpers import LinearCost, simulator, spec

DISAGG = ClusterConfig(mode="disagg", num_prefill=1, num_decode=1, link_bandwidth=1e6, link_latency_s=0.0,
                       kv_bytes_per_token=1000, num_layers=10)


def test_disagg_single_request_by_hand():
    (rec,) = simulator(DISAGG).run([spec(0, 0.0, 100, 5)])
    assert rec.ok and rec.output_tokens == 5
    # 100 KB at 1 MB/s (100 ms) pushed layer by layer during the 110 ms prefill: the last layer's
    # 10 ms is left when the compute ends, and the prefill step ends when its pushes are done
    pushed = Link(1e6).push_layerwise(0.0, 0.110, 100 * 1000, 10)
    assert pushed == pytest.approx(0.110 + 0.010)
    assert rec.first_token_s == pytest.approx(pushed)  # the prefill instance makes the first token
    assert rec.token_times_s[1] == pytest.approx(pushed + 0.012)  # admitted, then one decode step
    assert rec.end_s == pytest.approx(pushed + 4 * 0.012)


def test_disagg_one_token_requests_finish_on_the_prefill_instance():
    sim = simulator(DISAGG)
    (rec,) = sim.run([spec(0, 0.0, 100, 1)])
    assert rec.ok and rec.output_tokens == 1 and rec.end_s == pytest.approx(0.120)
    assert sim.links[0].bytes_sent == 100 * 1000  # pushed while computing, before the length was known
    assert all(i.blocks.num_used_blocks == 0 for i in sim.instances)


def test_disagg_decode_reservation_waits_for_free_blocks():
    # decode blocks for one 100-token prompt (7 of 10) at a time: the second request's prefill
    # starts only when the first has finished decoding and freed its blocks
    sim = simulator(DISAGG, num_blocks=10)
    first, second = sim.run([spec(0, 0.0, 100, 20), spec(1, 0.0, 100, 20)])
    assert first.ok and second.ok
    assert second.first_token_s > first.end_s
    assert sim.router.counters.reserve_refusals > 0
    assert all(i.blocks.num_used_blocks == 0 for i in sim.instances)


def test_disagg_reservation_keeps_a_block_per_running_request():
    # 10 blocks; a request decoding with 8 blocks leaves 2 free: a 1-block reservation would
    # leave 1 free block for 1 running request (allowed), a 2-block one 0 (refused). The decode
    # instance's handler (the live one) answers the router's messages.
    sim = simulator(DISAGG, num_blocks=10)
    d = sim.decode[0]
    sent = []
    d._send = lambda idx, msg: sent.append(msg)
    greedy = SamplingParams(max_tokens=10, ignore_eos=True)
    d.deliver(m.Reserve(1, "a", list(range(3, 123))))  # 120 tokens: 8 blocks
    assert sent.pop() == m.Reserved(1, True, list(range(8)), 0)
    d.deliver(m.Admit(1, "a", list(range(3, 123)), greedy, [7]))
    assert d.begin_step(0.0) is not None
    d.end_step(0.012, 0.0)
    d.deliver(m.Reserve(2, "b", list(range(500, 532))))  # 2 blocks
    assert not sent.pop().ok
    d.deliver(m.Reserve(3, "c", list(range(500, 510))))  # 1 block
    assert sent.pop().ok


def test_disagg_reservation_is_answered_between_decode_steps():
    fast = dataclasses.replace(DISAGG, link_bandwidth=1e15)
    # a decodes from 0.110 in 12 ms steps; b arrives at 0.115, its reservation is answered when
    # that step ends (0.122), then its 20-token prefill takes 30 ms
    a, b = simulator(fast).run([spec(0, 0.0, 100, 50), spec(1, 0.115, 20, 5)])
    assert a.token_times_s[1] == pytest.approx(0.122)
    assert b.first_token_s == pytest.approx(0.122 + 0.030)


def test_disagg_decode_prefix_hit_is_not_sent():
    sim = simulator(DISAGG)
    sim.run([spec(0, 0.0, 96, 2, hash_ids=(1, 2, 3)), spec(1, 5.0, 96, 2, hash_ids=(1, 2, 3))])
    # the second prompt's first 80 tokens (5 full blocks; the last token is always computed) are
    # cached on the decode instance: only the rest crosses the link
    assert sim.links[0].bytes_sent == 96 * 1000 + 16 * 1000


def test_neighbor_slowdown_stretches_steps_that_start_beside_a_busy_instance():
    """Instances sharing a host (a CPU profile's measured neighbor_slowdown) slow each other."""
    fast = dataclasses.replace(DISAGG, link_bandwidth=1e15)
    specs = [spec(0, 0.0, 100, 40), spec(1, 0.2, 100, 2)]
    base = simulator(fast).run(specs)
    slow = simulator(fast, cost=LinearCost(neighbor_slowdown=0.5)).run(specs)
    # alone, the first prefill is not stretched
    assert slow[0].first_token_s == pytest.approx(base[0].first_token_s) == pytest.approx(0.110)
    # the second prompt's reservation waits 6 ms for the decode step boundary at 0.206 s, then its
    # prefill starts while the decode instance is mid-step: 110 ms x 1.5
    assert base[1].first_token_s == pytest.approx(0.206 + 0.110)
    assert slow[1].first_token_s == pytest.approx(0.206 + 0.165)
    # decode steps that start during that prefill stretch too; the others do not
    gaps = [b - a for a, b in zip(slow[0].token_times_s, slow[0].token_times_s[1:])]
    assert min(gaps) == pytest.approx(0.012) and max(gaps) == pytest.approx(0.012 * 1.5)
