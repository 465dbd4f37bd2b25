"""Routing decisions as pure functions of a ClusterView (shared by the live router and the simulator).

Colocated: `round_robin` or `least_loaded` over unified instances. Disaggregated: the prefill and
the decode instance of a request are picked separately (`pick_pd`), each least loaded for its
own kind of work. Every function returns an instance id, or None when no live instance fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from banaserve.policies.view import ClusterView, InstanceStats


@dataclass(slots=True)
class RoundRobin:
    """Cursor state for `round_robin`; one per role being rotated over."""

    next_index: int = 0


def round_robin(view: ClusterView, cursor: RoundRobin, role: str = "unified") -> int | None:
    """Live instances of `role` in turn, skipping dead ones."""
    live = view.alive(role)
    if not live:
        return None
    choice = live[cursor.next_index % len(live)]
    cursor.next_index = (cursor.next_index % len(live)) + 1
    return choice.instance_id


def prefill_load(s: InstanceStats) -> tuple[float, float]:
    """Prefill work assigned and not yet done (router-side, exact), then engine-reported queue."""
    return (s.inflight_prefill_tokens + s.num_waiting, s.tokens_queued)


def decode_load(s: InstanceStats) -> tuple[float, float]:
    """Requests the instance is decoding or holding KV for, then its KV occupancy."""
    return (max(s.inflight_requests, s.num_running + s.num_reserved), s.kv_usage)


def unified_load(s: InstanceStats) -> tuple[float, float]:
    """Prefill tokens still to run plus one token per decoding request (a decode step's cost)."""
    return (s.inflight_prefill_tokens + max(s.inflight_requests, s.num_running + s.num_waiting),
            s.kv_usage)


def least_loaded(view: ClusterView, role: str = "unified") -> int | None:
    """Live instance of `role` with the lowest load for that role (ties: lowest id)."""
    key = {"prefill": prefill_load, "decode": decode_load}.get(role, unified_load)
    live = view.alive(role)
    if not live:
        return None
    return min(live, key=lambda s: (key(s), s.instance_id)).instance_id


def pick_pd(view: ClusterView) -> tuple[int | None, int | None]:
    """(prefill id, decode id) for a disaggregated request, chosen independently."""
    return least_loaded(view, "prefill"), least_loaded(view, "decode")
