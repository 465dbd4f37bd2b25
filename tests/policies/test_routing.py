"""Routing policies are pure functions of a ClusterView."""

import ast
import pathlib

from banaserve.policies.routing import RoundRobin, least_loaded, pick_pd, round_robin
from banaserve.policies.view import ClusterView, InstanceStats


def view(*stats: InstanceStats) -> ClusterView:
    return ClusterView({s.instance_id: s for s in stats})


def test_round_robin_skips_dead_instances():
    v = view(InstanceStats(0), InstanceStats(1, alive=False), InstanceStats(2))
    cur = RoundRobin()
    assert [round_robin(v, cur) for _ in range(4)] == [0, 2, 0, 2]
    assert round_robin(view(InstanceStats(0, alive=False)), RoundRobin()) is None


def test_least_loaded_counts_router_side_work_first():
    # stats lag: the router's own count of assigned prefill tokens decides a burst
    a = InstanceStats(0, inflight_prefill_tokens=500, inflight_requests=1)
    b = InstanceStats(1, inflight_prefill_tokens=0, inflight_requests=3, num_running=3)
    assert least_loaded(view(a, b)) == 1
    b.inflight_prefill_tokens = 900
    assert least_loaded(view(a, b)) == 0
    assert least_loaded(view(InstanceStats(0, num_running=2), InstanceStats(1, num_running=2))) == 0  # tie


def test_pd_picks_prefill_and_decode_separately():
    v = view(InstanceStats(0, role="prefill", inflight_prefill_tokens=100),
             InstanceStats(1, role="prefill", inflight_prefill_tokens=10),
             InstanceStats(2, role="decode", inflight_requests=5),
             InstanceStats(3, role="decode", inflight_requests=2, kv_blocks_used=90, kv_blocks_total=100),
             InstanceStats(4, role="decode", inflight_requests=2, kv_blocks_used=10, kv_blocks_total=100))
    assert pick_pd(v) == (1, 4)
    v.get(1).alive = False
    assert pick_pd(v) == (0, 4)
    assert pick_pd(view(InstanceStats(0, role="decode"))) == (None, 0)


def test_policies_import_nothing_that_runs_a_model_or_a_socket():
    root = pathlib.Path(__file__).resolve().parents[2] / "banaserve" / "policies"
    for file in root.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("torch", "zmq", "msgspec"), (file.name, name)
                assert not name.startswith(("banaserve.engine", "banaserve.cluster", "banaserve.transfer")), name


def test_routing_names_accept_dashes():
    from banaserve.policies.routing import routing_name
    assert routing_name("load-aware") == "load_aware" and routing_name("cache_aware") == "cache_aware"
    import pytest
    with pytest.raises(ValueError, match="routing must be one of"):
        routing_name("random")


def brute_cache_aware(loads: dict[int, int], matches: dict[int, int], num_blocks: int, cfg) -> int:
    """The rule spelled out: balanced and a strong match -> the best match (least loaded among
    equals, then lowest id); otherwise the least loaded (lowest id among equals)."""
    lo, hi = min(loads.values()), max(loads.values())
    ids = sorted(loads)
    least = min(ids, key=lambda i: (loads[i], i))
    if hi - lo > cfg.balance_abs and hi > cfg.balance_rel * lo:
        return least
    best = max(matches.get(i, 0) for i in ids)
    if num_blocks == 0 or best < cfg.min_match * num_blocks:
        return least
    return min((i for i in ids if matches.get(i, 0) == best), key=lambda i: (loads[i], i))


def test_cache_aware_against_the_rule_on_small_cases():
    import itertools

    from banaserve.policies.routing import CacheAware, cache_aware
    cfg = CacheAware(balance_abs=4, balance_rel=1.5, min_match=0.5)
    for load_a, load_b, load_c in itertools.product([0, 2, 9], repeat=3):
        for ma, mb, mc in itertools.product([0, 1, 3, 4], repeat=3):
            loads = {0: load_a, 1: load_b, 2: load_c}
            v = view(*(InstanceStats(i, inflight_prefill_tokens=x) for i, x in loads.items()))
            matches = {0: ma, 1: mb, 2: mc}
            assert cache_aware(v, matches, 4, cfg) == brute_cache_aware(loads, matches, 4, cfg), (loads, matches)


def test_load_aware_ignores_where_the_prefix_is():
    from banaserve.policies.routing import load_aware
    v = view(InstanceStats(0, inflight_prefill_tokens=100), InstanceStats(1, inflight_prefill_tokens=10))
    assert load_aware(v) == 1


def test_prefix_index_matches_runs_and_forgets_lru():
    from banaserve.policies.prefix_index import PrefixIndex
    idx = PrefixIndex(capacity_blocks=3)
    idx.record(0, [b"a", b"b", b"c"])
    assert idx.match(0, [b"a", b"b", b"x"]) == 2 and idx.match(1, [b"a"]) == 0
    idx.record(0, [b"d"])  # evicts the least recently recorded: a
    assert idx.match(0, [b"a", b"b"]) == 0 and idx.match(0, [b"d"]) == 1
    idx.forget(0)
    assert idx.match(0, [b"d"]) == 0
