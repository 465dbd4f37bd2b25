"""What the router knows about the cluster: one InstanceStats per instance, kept as a ClusterView.

Engine-reported fields come from the instance's periodic stats message; the `inflight_*` fields
are the router's own exact count of work it has assigned and not yet seen progress on (stats lag
by up to one publish interval, so a burst of arrivals would otherwise all herd onto one instance).
Plain data only: the live router and the simulator both build these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

UNIFIED, PREFILL, DECODE = "unified", "prefill", "decode"
ROLES = (UNIFIED, PREFILL, DECODE)


@dataclass(slots=True)
class InstanceStats:
    """One instance's load. Counts are instantaneous; step_time_ms and busy_fraction are recent averages."""

    instance_id: int
    role: str = "unified"
    pid: int = 0
    alive: bool = True
    num_waiting: int = 0
    num_running: int = 0
    num_reserved: int = 0  # KV reservations held for incoming PD transfers
    tokens_queued: int = 0  # tokens scheduled but not yet computed (prefill left + pending decodes)
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    kv_blocks_cached_free: int = 0
    step_time_ms: float = 0.0
    busy_fraction: float = 0.0
    num_steps: int = 0
    num_preemptions: int = 0
    bytes_pushed: int = 0  # KV bytes this instance sent to decode instances
    bytes_received: int = 0  # KV bytes received over a network channel
    transfers_ok: int = 0
    transfers_failed: int = 0
    prompt_tokens: int = 0  # prompt tokens of requests admitted (first admission only)
    prefix_hit_tokens: int = 0  # of those, found in the local prefix cache or loaded from elsewhere
    kv_store_hit_tokens: int = 0  # loaded from the Global KV Cache Store
    kv_store_loaded_bytes: int = 0
    kv_store_saved_bytes: int = 0
    kv_store_failed_loads: int = 0
    kv_store_load_s: float = 0.0  # time the copy thread spent loading
    kv_store_load_wait_s: float = 0.0  # of it, time the forward waited (not hidden by compute)
    seq: int = 0  # publish counter of the instance, increases by one per message
    # router-side, not sent by the instance
    inflight_requests: int = 0
    inflight_prefill_tokens: int = 0
    updated_at: float = 0.0

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


@dataclass(slots=True)
class ClusterView:
    """Every instance the router started, by id (dead ones stay, with alive=False)."""

    instances: dict[int, InstanceStats] = field(default_factory=dict)

    def publish(self, s: InstanceStats, now: float) -> None:
        """An instance's fresh stats: take the fields it reports, keep the router's own."""
        cur = self.instances.get(s.instance_id)
        if cur is None or not cur.alive:
            return
        for name in ENGINE_FIELDS:
            setattr(cur, name, getattr(s, name))
        cur.updated_at = now

    def alive(self, role: str | None = None) -> list[InstanceStats]:
        """Live instances, in id order, optionally only those of `role`."""
        return [s for _, s in sorted(self.instances.items()) if s.alive and (role is None or s.role == role)]

    def get(self, instance_id: int) -> InstanceStats:
        return self.instances[instance_id]


ROUTER_FIELDS = {"instance_id", "role", "alive", "inflight_requests", "inflight_prefill_tokens", "updated_at"}
ENGINE_FIELDS = [f.name for f in fields(InstanceStats) if f.name not in ROUTER_FIELDS]
