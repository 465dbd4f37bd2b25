import dataclasses

import pytest

from banaserve.bench.metrics import SLO, summarize, tpot_s, ttft_s
from banaserve.sim.cluster import ClusterConfig
from banaserve.sim.links import Link
from tests.sim.helpers import simulator, spec

DISAGG = ClusterConfig(mode="disagg", num_prefill=1, num_decode=1, link_bandwidth=1e6, link_latency_s=0.0,
                       kv_bytes_per_token=1000, num_layers=10)


def test_colocated_single_request_by_hand():
    (rec,) = simulator().run([spec(0, 1.0, 100, 5)])
    assert rec.ok and rec.output_tokens == 5 and rec.send_s == 1.0
    assert ttft_s(rec) == pytest.approx(0.110)  # one prefill step: 10 ms + 100 x 1 ms
    assert tpot_s(rec) == pytest.approx(0.012)  # decode steps: 10 ms + 2 ms
    assert len(rec.token_times_s) == 5


def test_arrivals_in_the_same_instant_share_a_step():
    recs = simulator().run([spec(0, 0.0, 50, 2), spec(1, 0.0, 50, 2)])
    assert recs[0].first_token_s == recs[1].first_token_s == pytest.approx(0.010 + 0.100)


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
    assert sim.pd.num_refusals > 0
    assert all(i.blocks.num_used_blocks == 0 for i in sim.instances)


def test_disagg_reservation_keeps_a_block_per_running_request():
    # 10 blocks; a request decoding with 8 blocks leaves 2 free: a 1-block reservation would
    # leave 1 free block for 1 running request (allowed), a 2-block one 0 (refused)
    sim = simulator(DISAGG, num_blocks=10)
    d = sim.decode[0]
    assert d.reserve("a", list(range(3, 123))) == 0  # 120 tokens: 8 blocks
    d.admit("a", list(range(3, 123)), 7, 10)
    d.begin_step(0.0)
    assert d.reserve("b", list(range(500, 532))) is None  # 2 blocks
    assert d.reserve("c", list(range(500, 510))) == 0  # 1 block


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


def test_prompts_that_do_not_fit_fail_like_the_engine():
    recs = simulator(max_model_len=128).run([spec(0, 0.0, 200, 5), spec(1, 0.0, 100, 5)])
    assert not recs[0].ok and "HTTP 400" in recs[0].error
    assert recs[1].ok


def workload(n: int = 60) -> list:
    return [spec(i, 0.05 * i, 40 + (37 * i) % 300, 1 + (13 * i) % 40) for i in range(n)]


@pytest.mark.parametrize("routing", ["least_loaded", "round_robin"])
def test_run_ahead_gives_the_same_result_as_stepping_through_the_heap(routing):
    cluster = ClusterConfig(num_instances=3, routing=routing)
    fast = simulator(cluster, run_ahead=True).run(workload())
    slow = simulator(cluster, run_ahead=False).run(workload())
    assert [dataclasses.astuple(r) for r in fast] == [dataclasses.astuple(r) for r in slow]


def test_every_request_completes_with_its_output_length():
    for cluster in (ClusterConfig(num_instances=2), dataclasses.replace(DISAGG, num_prefill=2, num_decode=2)):
        specs = workload()
        recs = simulator(cluster, num_blocks=80).run(specs)
        assert all(r.ok for r in recs)
        assert [r.output_tokens for r in recs] == [s.output_len for s in specs]
        assert all(len(r.token_times_s) == r.output_tokens for r in recs)
        assert all(r.arrival_s <= r.first_token_s <= r.end_s for r in recs)


def test_more_instances_serve_an_overload_faster():
    specs = [spec(i, 0.01 * i, 300, 30) for i in range(40)]
    one = summarize(simulator(ClusterConfig(num_instances=1)).run(specs), SLO())
    four = summarize(simulator(ClusterConfig(num_instances=4)).run(specs), SLO())
    assert four.ttft_ms.mean < one.ttft_ms.mean and four.duration_s < one.duration_s


def test_least_loaded_spreads_requests():
    sim = simulator(ClusterConfig(num_instances=4))
    sim.run([spec(i, 0.0, 100, 10) for i in range(8)])
    assert [i.num_steps > 0 for i in sim.instances] == [True] * 4


def test_bad_cluster_configs():
    with pytest.raises(ValueError, match="mode"):
        simulator(ClusterConfig(mode="mixed"))
    with pytest.raises(ValueError, match="at least one"):
        simulator(ClusterConfig(mode="disagg", num_decode=0))
    with pytest.raises(ValueError, match="routing"):
        simulator(ClusterConfig(routing="random"))
