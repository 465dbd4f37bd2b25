"""Disaggregated clusters (1P+1D, 2P+2D) over both channels: token-identical to offline, no leaks.

Decode instances accept pushes over shared memory and TCP at once; the router's configured
channel picks one per transfer, so each cluster is exercised with both without restarting.
"""

import asyncio
import os
import signal
import time

import pytest

from banaserve.engine.sampling_params import SamplingParams
from banaserve.transfer.shm_kv import list_segments
from tests.cluster.cluster_harness import WAIT_S, Harness, assert_matches, cluster_config, stream_killing_one

TOPOLOGIES = [(1, 1), (2, 2)]
CHANNELS = ["shm", "tcp"]


@pytest.fixture(scope="module", params=TOPOLOGIES, ids=[f"{p}P{d}D" for p, d in TOPOLOGIES])
def cluster(request, tiny_llama):
    p, d = request.param
    h = Harness(cluster_config(tiny_llama, mode="disagg", prefill=p, decode=d))
    h.topology = request.param
    yield h
    h.close()


def use_channel(cluster: Harness, channel: str) -> dict:
    cluster.client.config.transfer = channel
    return dict(cluster.client.cluster_state()["transfers"])


@pytest.mark.parametrize("channel", CHANNELS)
def test_greedy_identical_to_offline(cluster, workload, channel):
    before = use_channel(cluster, channel)
    results = cluster.run_workload(workload, f"g-{channel}-")
    assert_matches(workload, results)
    after = cluster.client.cluster_state()["transfers"]
    n = len(workload.prompts)
    # every request went through a KV transfer; none fell back to a local prefill
    assert after["started"] - before["started"] == after["ok"] - before["ok"] == n
    assert after["failed"] == before["failed"] and after["lease_timeouts"] == before["lease_timeouts"]
    assert set(cluster.used_blocks().values()) == {0}
    after = cluster.client.cluster_state()["transfers"]
    assert after["bytes_pushed"] > before["bytes_pushed"]
    if channel == "tcp":
        assert after["bytes_received"] - before["bytes_received"] == after["bytes_pushed"] - before["bytes_pushed"]
    else:
        assert after["bytes_received"] == before["bytes_received"]
    state = cluster.client.cluster_state()
    p, d = cluster.topology
    assert [i["role"] for i in state["instances"]] == ["prefill"] * p + ["decode"] * d
    assert all(i["alive"] and i["pid"] > 0 for i in state["instances"])


@pytest.mark.parametrize("channel", CHANNELS)
def test_abort_mid_stream_and_during_prefill(cluster, workload, channel):
    use_channel(cluster, channel)
    long = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)

    async def run():
        jobs = [cluster.collect(f"a-{channel}-{i}", p, long, stop_after=(1, 3, None)[i % 3])
                for i, p in enumerate(workload.prompts[:12])]
        # abandoned before their first token: aborted while reserving or prefilling
        early = [asyncio.ensure_future(cluster.collect(f"e-{channel}-{i}", p, long))
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
    if cluster.topology != (1, 1):
        pytest.skip("one topology is enough for the fallback path")
    use_channel(cluster, "shm")
    cfg = cluster.client.config
    cfg.lease_timeout_s = 0.0
    try:
        results = cluster.run_workload(workload, "l")
    finally:
        cfg.lease_timeout_s = 30.0
    assert_matches(workload, results)
    assert cluster.client.cluster_state()["transfers"]["lease_timeouts"] > 0
    assert set(cluster.used_blocks().values()) == {0}


def test_decode_instance_killed_mid_run(cluster, workload):
    """kill -9 a decode instance while it streams: its requests finish elsewhere, identical."""
    if cluster.topology != (2, 2):
        pytest.skip("needs a second decode instance")
    client = cluster.client
    use_channel(cluster, "shm")
    results, killed = stream_killing_one(
        cluster, workload,
        lambda t: t.stage == "run" and len(t.generated) >= 2 and client.view.get(t.run_idx).role == "decode")
    assert killed, "no request was decoding when expected"
    assert_matches(workload, results)
    state = client.cluster_state()
    victim = state["instances"][killed[0]]
    assert not victim["alive"] and state["router"]["retries"] >= 1
    assert victim["shm_segment"] not in list_segments(os.getpid())  # the router unlinked it
    assert set(cluster.used_blocks().values()) == {0}  # survivors hold nothing

    # with every instance gone, requests fail with a clear error and the client stays usable
    for inst in state["instances"]:
        if inst["alive"]:
            os.kill(inst["pid"], signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while any(s.alive for s in client.view.instances.values()):
        assert time.monotonic() < deadline
        cluster.run(asyncio.sleep(0.02))
    with pytest.raises(RuntimeError, match="no live instance"):
        cluster.run(cluster.collect("after", workload.prompts[0], workload.params[0]))
