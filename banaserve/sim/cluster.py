"""Shape of a simulated cluster and how its router picks instances (the shared policy functions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from banaserve.policies.routing import RoundRobin, least_loaded, round_robin
from banaserve.policies.view import ClusterView
from banaserve.sim.instance import SimInstance

COLOCATED, DISAGG = "colocated", "disagg"
ROUTINGS = ("least_loaded", "round_robin")


@dataclass(slots=True)
class ClusterConfig:
    """Shape of the simulated cluster. Instances of one role share one InstanceConfig."""

    mode: str = COLOCATED
    num_instances: int = 1  # colocated
    num_prefill: int = 1  # disagg
    num_decode: int = 1  # disagg
    routing: str = "least_loaded"
    link_bandwidth: float = 100e9 / 8  # bytes/s of each prefill instance's outgoing link
    link_latency_s: float = 10e-6
    kv_bytes_per_token: int = 0  # whole model, all layers
    num_layers: int = 1
    reserve_retry_s: float = 0.02  # as the live router (cluster/config.py)

    def validate(self) -> None:
        if self.mode not in (COLOCATED, DISAGG):
            raise ValueError(f"mode must be {COLOCATED} or {DISAGG}, got {self.mode!r}")
        counts = (self.num_instances,) if self.mode == COLOCATED else (self.num_prefill, self.num_decode)
        if any(n < 1 for n in counts):
            raise ValueError("every role needs at least one instance")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")


Router = Callable[[list[SimInstance]], SimInstance]


def make_router(kind: str, role: str) -> Router:
    """Pick an instance of `role` with the live router's policy functions over the instances' stats."""
    cursor = RoundRobin()

    def pick(insts: list[SimInstance]) -> SimInstance:
        view = ClusterView({i.id: i.stats() for i in insts})
        chosen = round_robin(view, cursor, role) if kind == "round_robin" else least_loaded(view, role)
        return next(i for i in insts if i.id == chosen)
    return pick
