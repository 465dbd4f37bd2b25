"""Shape of a simulated cluster and how its router picks instances (the shared policy functions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from banaserve.policies.routing import RoundRobin, least_loaded, round_robin
from banaserve.policies.view import InstanceStats
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

    def validate(self) -> None:
        if self.mode not in (COLOCATED, DISAGG):
            raise ValueError(f"mode must be {COLOCATED} or {DISAGG}, got {self.mode!r}")
        counts = (self.num_instances,) if self.mode == COLOCATED else (self.num_prefill, self.num_decode)
        if any(n < 1 for n in counts):
            raise ValueError("every role needs at least one instance")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")


Router = Callable[[list[SimInstance]], SimInstance]


def make_router(kind: str, load: Callable[[InstanceStats], tuple]) -> Router:
    """Pick an instance with the shared policy functions over the instances' stats."""
    if kind == "round_robin":
        state = RoundRobin()

        def pick(insts: list[SimInstance]) -> SimInstance:
            return insts[round_robin([i.stats() for i in insts], state) - insts[0].id]
    else:
        def pick(insts: list[SimInstance]) -> SimInstance:
            return insts[least_loaded([i.stats() for i in insts], load) - insts[0].id]
    return pick
