"""Routing decisions as pure functions of a ClusterView (shared by the live router and the simulator).

Colocated: `round_robin`, `least_loaded` (= `load_aware`) or `cache_aware` over unified
instances. Disaggregated: the prefill and the decode instance of a request are picked
separately (`pick_pd`), each by its own kind of work. Every function returns an instance id, or
None when no live instance fits.

`load_aware` is BanaServe's rule: with a Global KV Cache Store every instance can load a
request's cached prefix, so the prefill work left after the store hit is the same everywhere and
only load decides. `cache_aware` is the baseline it replaces (SGLang's router, Dynamo's KV
router): go where the longest prefix is cached locally, unless the cluster is out of balance.
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


ROUTINGS = ("least_loaded", "round_robin", "load_aware", "cache_aware")


def routing_name(name: str) -> str:
    """`load-aware` and `load_aware` are one policy (flags use dashes, code underscores)."""
    norm = name.replace("-", "_")
    if norm not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(r.replace('_', '-') for r in ROUTINGS)}, got {name!r}")
    return norm


def load_aware(view: ClusterView, role: str = "unified") -> int | None:
    """BanaServe: load alone (the store makes the prefix hit the same on every instance)."""
    return least_loaded(view, role)


@dataclass(slots=True)
class CacheAware:
    """SGLang router's thresholds: out of balance when the most loaded instance has more than
    `balance_abs` units of work over the least loaded and more than `balance_rel` times it; a
    prefix match counts when it covers at least `min_match` of the prompt's blocks."""

    balance_abs: float = 64.0
    balance_rel: float = 1.5
    min_match: float = 0.5


def cache_aware(view: ClusterView, matches: dict[int, int], num_blocks: int, cfg: CacheAware,
                role: str = "unified") -> int | None:
    """The instance with the longest local prefix match (`matches`: id -> matched blocks of the
    prompt's `num_blocks`), ties and weak matches to the least loaded; out of balance, least loaded."""
    live = view.alive(role)
    if not live:
        return None
    key = {"prefill": prefill_load, "decode": decode_load}.get(role, unified_load)
    loads = {s.instance_id: key(s)[0] for s in live}
    lo, hi = min(loads.values()), max(loads.values())
    if hi - lo > cfg.balance_abs and hi > cfg.balance_rel * lo:
        return least_loaded(view, role)
    best = max(matches.get(s.instance_id, 0) for s in live)
    if num_blocks == 0 or best < cfg.min_match * num_blocks:
        return least_loaded(view, role)
    tied = [s for s in live if matches.get(s.instance_id, 0) == best]
    return min(tied, key=lambda s: (key(s), s.instance_id)).instance_id
