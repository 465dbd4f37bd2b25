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
