"""Routing decisions as pure functions over a ClusterView (no sockets, no torch).

The live router and the simulator call these same functions, so a simulated policy is the
deployed policy.
"""

from __future__ import annotations

from banaserve.policies.view import ClusterView, InstanceStats


class RoundRobin:
    """The position of a round-robin rotation, carried between calls of `round_robin`."""

    def __init__(self) -> None:
        self.next = 0


def round_robin(view: ClusterView, state: RoundRobin) -> int:
    """Id of the next instance in turn; `state` carries the position between calls."""
    if not view:
        raise ValueError("no instance to route to")
    choice = view[state.next % len(view)].id
    state.next += 1
    return choice


def prefill_load(s: InstanceStats) -> tuple[float, float]:
    """Prefill work ahead of a new request: queued prompt tokens, then requests (tie-break)."""
    return (s.queued_prefill_tokens, s.num_waiting + s.num_running)


def decode_load(s: InstanceStats) -> tuple[float, float]:
    """Decode pressure: KV occupancy (incl. reserved blocks), then batch size."""
    return (s.kv_usage, s.num_running + s.num_waiting)


def unified_load(s: InstanceStats) -> tuple[float, float, float]:
    """A colocated instance does both: queued prefill work first, then memory, then batch."""
    return (s.queued_prefill_tokens, s.kv_usage, s.num_running + s.num_waiting)


def least_loaded(view: ClusterView, key=unified_load) -> int:
    """Id of the instance with the smallest `key(stats)`; the lowest id wins ties."""
    if not view:
        raise ValueError("no instance to route to")
    return min(view, key=lambda s: (key(s), s.id)).id
