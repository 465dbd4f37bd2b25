"""What routing and migration policies see of the cluster: one stats record per instance.

Instances publish these numbers (live) or the simulator fills them in (simulated); policies are
pure functions over a list of them, so both call the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

UNIFIED = "unified"
PREFILL = "prefill"
DECODE = "decode"
ROLES = (UNIFIED, PREFILL, DECODE)


@dataclass(slots=True)
class InstanceStats:
    """Load of one instance at one moment."""

    id: int
    role: str = UNIFIED
    num_waiting: int = 0
    num_running: int = 0
    tokens_in_flight: int = 0  # context tokens of running requests (KV they hold or will hold)
    queued_prefill_tokens: int = 0  # prompt tokens still to compute, waiting and running
    kv_blocks_used: int = 0
    kv_blocks_total: int = 1
    step_time_s: float = 0.0  # duration of the last step
    busy_fraction: float = 0.0  # share of recent wall time spent in steps

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 1.0


ClusterView = list[InstanceStats]


def with_role(view: ClusterView, role: str) -> ClusterView:
    """The instances of `view` that serve `role` (unified instances serve every role)."""
    return [s for s in view if s.role == role or s.role == UNIFIED]
