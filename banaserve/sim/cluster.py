"""Shape of a simulated cluster, and what its live Router needs to run on it."""

from __future__ import annotations

from dataclasses import dataclass

from banaserve.cluster import config as live
from banaserve.cluster.messages import Hello
from banaserve.policies.routing import routing_name
from banaserve.policies.view import DECODE, PREFILL, UNIFIED
from banaserve.sim.instance import InstanceConfig
from banaserve.transfer.layout import KVLayout

COLOCATED, DISAGG = "colocated", "disagg"


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
    control_latency_s: float = 0.0  # router <-> instance messages (live: ipc, tens of microseconds)
    kv_store_blocks: int = 0  # a Global KV Cache Store of this many blocks (0: none)
    store_bandwidth: float = 25e9  # bytes/s of each instance's link to the store
    store_latency_s: float = 10e-6

    def validate(self) -> None:
        if self.mode not in (COLOCATED, DISAGG):
            raise ValueError(f"mode must be {COLOCATED} or {DISAGG}, got {self.mode!r}")
        counts = (self.num_instances,) if self.mode == COLOCATED else (self.num_prefill, self.num_decode)
        if any(n < 1 for n in counts):
            raise ValueError("every role needs at least one instance")
        self.routing = routing_name(self.routing)
        if self.kv_store_blocks < 0 or not self.store_bandwidth > 0:
            raise ValueError("kv_store_blocks must be >= 0 and store_bandwidth > 0")
        if self.control_latency_s < 0:
            raise ValueError(f"control latency must be >= 0, got {self.control_latency_s}")

    def roles(self) -> list[str]:
        """Role of each instance, by instance id (as the live ClusterConfig numbers them)."""
        if self.mode == COLOCATED:
            return [UNIFIED] * self.num_instances
        return [PREFILL] * self.num_prefill + [DECODE] * self.num_decode


def router_config(c: ClusterConfig) -> live.ClusterConfig:
    """The live router's settings for this cluster: KV is written in place, as over shm."""
    cfg = live.ClusterConfig(mode=c.mode, instances=c.num_instances, prefill=c.num_prefill, decode=c.num_decode,
                             transfer="shm", routing=c.routing, reserve_retry_s=c.reserve_retry_s)
    cfg.validate()
    return cfg


def peers(roles: list[str], cfg: InstanceConfig) -> dict[int, Hello]:
    """The Hello each simulated instance would have sent: decode instances take pushed KV."""
    layout = KVLayout("sim", 1, cfg.block_size, 1, 1, "float32", cfg.num_blocks)
    return {i: Hello(i, role, 0, layout, f"sim:{i}" if role == DECODE else None, None, cfg.max_model_len, 0, [])
            for i, role in enumerate(roles)}
