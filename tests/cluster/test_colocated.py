"""Colocated cluster (2 unified instances): token-identical to offline, aborts leak nothing."""

import asyncio

import pytest

from banaserve.engine.sampling_params import SamplingParams
from tests.cluster.cluster_harness import Harness, assert_matches, cluster_config, stream_killing_one


@pytest.fixture(scope="module")
def cluster(tiny_llama):
    h = Harness(cluster_config(tiny_llama, mode="colocated", instances=2))
    yield h
    h.close()


def test_greedy_identical_to_offline(cluster, workload):
    assert_matches(workload, cluster.run_workload(workload, "c"))
    state = cluster.client.cluster_state()
    assert [i["role"] for i in state["instances"]] == ["unified", "unified"]
    assert all(i["alive"] and i["pid"] > 0 for i in state["instances"])
    # least-loaded routing spread the burst over both instances
    assert all(i["stats"]["num_steps"] > 0 for i in state["instances"])
    assert cluster.used_blocks() == {0: 0, 1: 0}


def test_abort_mid_stream_frees_everything(cluster, workload):
    async def run():
        jobs = [cluster.collect(f"a{i}", p, SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True),
                                stop_after=2 if i % 2 else None)
                for i, p in enumerate(workload.prompts[:12])]
        return await asyncio.gather(*jobs)

    results = cluster.run(run())
    assert all(len(r) == 2 and not r[-1].finished for r in results[1::2])
    assert all(r[-1].finished and len(r[-1].token_ids) == 200 for r in results[0::2])
    assert cluster.used_blocks() == {0: 0, 1: 0}


def test_validate_rejects_impossible_requests(cluster):
    c = cluster.client
    with pytest.raises(ValueError, match="context"):
        c.validate([5] * 2100, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="token ids"):
        c.validate([5, 10 ** 6], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError):
        c.validate([], SamplingParams(max_tokens=4))
    c.validate([5, 6, 7], SamplingParams(max_tokens=4))


def test_instance_killed_mid_run(cluster, workload):
    """kill -9 one instance while it streams: its requests continue on the other, identical."""
    client = cluster.client
    results, killed = stream_killing_one(cluster, workload, lambda t: len(t.generated) >= 2)
    assert killed
    assert_matches(workload, results)
    state = client.cluster_state()
    assert not state["instances"][killed[0]]["alive"] and state["router"]["retries"] >= 1
    assert set(cluster.used_blocks().values()) == {0}
