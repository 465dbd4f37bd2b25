"""The simulated Global KV Cache Store: the live index and connector rules, time from a store link."""

import dataclasses

from banaserve.sim.cluster import ClusterConfig
from tests.sim.helpers import simulator, spec

TWO = ClusterConfig(num_instances=2, routing="round-robin", kv_bytes_per_token=1000, num_layers=10)


def turns() -> list:
    # a 3-turn conversation twice over: each turn's prompt starts with the whole previous one
    return [spec(i, 1.0 * i, 64 * (i % 3 + 1), 4, hash_ids=tuple(range(i % 3 + 1))) for i in range(6)]


def test_a_prefix_computed_on_one_instance_is_loaded_on_the_other():
    base = simulator(TWO).run(turns())
    sim = simulator(dataclasses.replace(TWO, kv_store_blocks=1000, store_bandwidth=1e12))
    recs = sim.run(turns())
    assert all(r.ok for r in recs)
    hits = sum(i.store.hit_tokens for i in sim.instances)
    assert hits > 0 and sim.store.stats.puts > 0
    # round-robin sends every other turn to the instance that did not compute its history
    assert sum(r.first_token_s - r.arrival_s for r in recs) < sum(r.first_token_s - r.arrival_s for r in base)


def test_a_slow_store_link_costs_time_and_a_tiny_store_evicts():
    fast = simulator(dataclasses.replace(TWO, kv_store_blocks=1000, store_bandwidth=1e12)).run(turns())
    slow = simulator(dataclasses.replace(TWO, kv_store_blocks=1000, store_bandwidth=1e5)).run(turns())
    assert sum(r.end_s for r in slow) > sum(r.end_s for r in fast)
    sim = simulator(dataclasses.replace(TWO, kv_store_blocks=6, store_bandwidth=1e12))
    assert all(r.ok for r in sim.run(turns()))
    assert sim.store.stats.evictions > 0
    assert all(i.blocks.num_used_blocks == 0 for i in sim.instances)
