"""Disaggregated clusters (1P+1D, 2P+2D; shm and tcp): token-identical to offline, no block leaks."""

import asyncio

import pytest
from cluster_harness import Harness, assert_matches, cluster_config

from banaserve.engine.sampling_params import SamplingParams

TOPOLOGIES = [("shm", 1, 1), ("tcp", 1, 1), ("shm", 2, 2), ("tcp", 2, 2)]


@pytest.fixture(scope="module", params=TOPOLOGIES, ids=[f"{t}-{p}P{d}D" for t, p, d in TOPOLOGIES])
def cluster(request, tiny_model):
    transfer, p, d = request.param
    h = Harness(cluster_config(tiny_model, mode="disagg", prefill=p, decode=d, transfer=transfer))
    h.topology = request.param
    yield h
    h.close()


def test_greedy_identical_to_offline(cluster, workload):
    results = cluster.run_workload(workload, "g")
    assert_matches(workload, results)
    state = cluster.client.cluster_state()
    t = state["transfers"]
    # every request went through a KV transfer and none fell back to a local prefill
    assert t["started"] == t["ok"] == len(workload.prompts)
    assert t["failed"] == t["lease_timeouts"] == 0
    transfer = cluster.topology[0]
    used = cluster.used_blocks()
    assert set(used.values()) == {0}
    state = cluster.client.cluster_state()
    assert state["transfers"]["bytes_pushed"] > 0
    if transfer == "tcp":
        assert state["transfers"]["bytes_received"] == state["transfers"]["bytes_pushed"]
    roles = [i["role"] for i in state["instances"]]
    assert roles == ["prefill"] * cluster.topology[1] + ["decode"] * cluster.topology[2]


def test_abort_mid_stream_and_during_prefill(cluster, workload):
    async def run():
        long = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
        jobs = [cluster.collect(f"a{i}", p, long, stop_after=(1, 3, None)[i % 3])
                for i, p in enumerate(workload.prompts[:12])]
        # abandoned before the first token: aborts while reserving or prefilling
        early = [asyncio.ensure_future(cluster.collect(f"e{i}", p, long))
                 for i, p in enumerate(workload.prompts[12:18])]
        await asyncio.sleep(0)
        for job in early:
            job.cancel()
        return await asyncio.gather(*jobs)

    results = cluster.run(run())
    assert all(r[-1].finished and len(r[-1].token_ids) == 100 for r in results[2::3])
    assert set(cluster.used_blocks().values()) == {0}


def test_lease_timeout_reprefills_on_decode(cluster, workload):
    """With a zero lease every transfer expires: requests are prefilled again on D, still identical."""
    if cluster.topology != ("shm", 1, 1):
        pytest.skip("one topology is enough for the fallback path")
    cfg = cluster.client.config
    cfg.lease_timeout_s = 0.0
    try:
        results = cluster.run_workload(workload, "l")
    finally:
        cfg.lease_timeout_s = 30.0
    assert_matches(workload, results)
    t = cluster.client.cluster_state()["transfers"]
    assert t["lease_timeouts"] > 0
    assert set(cluster.used_blocks().values()) == {0}
