import pytest

from banaserve.policies.routing import RoundRobin, decode_load, least_loaded, prefill_load, round_robin
from banaserve.policies.view import DECODE, PREFILL, UNIFIED, InstanceStats, with_role


def test_round_robin_cycles():
    view = [InstanceStats(id=i) for i in (4, 5, 6)]
    state = RoundRobin()
    assert [round_robin(view, state) for _ in range(4)] == [4, 5, 6, 4]


def test_least_loaded_by_queued_prefill_then_memory():
    view = [InstanceStats(id=0, queued_prefill_tokens=500), InstanceStats(id=1, queued_prefill_tokens=100),
            InstanceStats(id=2, queued_prefill_tokens=100, kv_blocks_used=50, kv_blocks_total=100)]
    assert least_loaded(view) == 1
    assert least_loaded(view, prefill_load) == 1  # tie on tokens: fewer requests (equal) -> lowest id


def test_decode_load_prefers_free_memory():
    view = [InstanceStats(id=0, role=DECODE, kv_blocks_used=90, kv_blocks_total=100),
            InstanceStats(id=1, role=DECODE, kv_blocks_used=10, kv_blocks_total=100, num_running=30)]
    assert least_loaded(view, decode_load) == 1


def test_roles_and_empty_views():
    view = [InstanceStats(id=0, role=PREFILL), InstanceStats(id=1, role=DECODE), InstanceStats(id=2)]
    assert [s.id for s in with_role(view, DECODE)] == [1, 2]
    assert with_role(view, UNIFIED)[0].id == 2
    with pytest.raises(ValueError):
        least_loaded([])
    with pytest.raises(ValueError):
        round_robin([], RoundRobin())
