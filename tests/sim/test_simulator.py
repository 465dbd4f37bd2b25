import dataclasses

import pytest

from banaserve.bench.metrics import SLO, summarize, tpot_s, ttft_s
from banaserve.sim.cluster import ClusterConfig
from tests.sim.helpers import LinearCost, simulator, spec

DISAGG = ClusterConfig(mode="disagg", num_prefill=1, num_decode=1, link_bandwidth=1e6, link_latency_s=0.0,
                       kv_bytes_per_token=1000, num_layers=10)


def test_colocated_single_request_by_hand():
    (rec,) = simulator().run([spec(0, 1.0, 100, 5)])
    assert rec.ok and rec.output_tokens == 5 and rec.send_s == 1.0
    assert ttft_s(rec) == pytest.approx(0.110)  # one prefill step: 10 ms + 100 x 1 ms
    assert tpot_s(rec) == pytest.approx(0.012)  # decode steps: 10 ms + 2 ms
    assert len(rec.token_times_s) == 5


@pytest.mark.parametrize("cluster", [None, DISAGG])
def test_request_overhead_delays_routing_but_not_the_recorded_send(cluster):
    """A front-end latency (measured by `banaserve profile --serving`) comes before the first step."""
    base = simulator(cluster).run([spec(0, 1.0, 100, 5), spec(1, 1.02, 30, 3)])
    late = simulator(cluster, cost=LinearCost(request_overhead_s=0.05)).run([spec(0, 1.0, 100, 5),
                                                                           spec(1, 1.02, 30, 3)])
    for b, r in zip(base, late):
        assert r.send_s == b.send_s
        assert ttft_s(r) == pytest.approx(ttft_s(b) + 0.05)
        assert tpot_s(r) == pytest.approx(tpot_s(b))


def test_arrivals_in_the_same_instant_share_a_step():
    recs = simulator().run([spec(0, 0.0, 50, 2), spec(1, 0.0, 50, 2)])
    assert recs[0].first_token_s == recs[1].first_token_s == pytest.approx(0.010 + 0.100)


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
