"""Settings of a multi-process cluster: the engine settings every instance uses plus the topology."""

from __future__ import annotations

from dataclasses import dataclass, field

from banaserve.engine.config import EngineConfig
from banaserve.policies.routing import routing_name


@dataclass(slots=True)
class ClusterConfig:
    """`mode` colocated runs `instances` unified instances; disagg runs `prefill` + `decode` ones."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    mode: str = "colocated"  # colocated | disagg
    instances: int = 1
    prefill: int = 1
    decode: int = 1
    transfer: str = "shm"  # shm (same host, default) | tcp
    routing: str = "least_loaded"  # least_loaded = load_aware | round_robin (colocated) | cache_aware
    kv_store: str | None = None  # "local": a Global KV Cache Store process on this host
    kv_store_gb: float = 4.0  # its capacity
    name: str | None = None  # model name reported to clients (default: the checkpoint's folder name)
    torch_threads: int | None = None  # per instance process; None leaves torch's default
    lease_timeout_s: float = 30.0  # reserve -> prefill pushed; past it the request is re-prefilled
    reserve_retry_s: float = 0.02  # wait before asking again when no decode instance has room
    max_attempts: int = 4  # dispatches of one request (instance deaths, failed transfers) before failing
    stats_interval_s: float = 0.05  # instances publish at least this often
    dead_after_s: float = 30.0  # stats silence after which a live process counts as hung and is killed
    start_timeout_s: float = 300.0
    admit_wait_s: float = 10.0  # decode side: wait for a TCP transfer's last frames after admission
    transfer_host: str = "127.0.0.1"  # address TCP receivers bind to

    def validate(self) -> None:
        self.engine.validate()
        if self.mode not in ("colocated", "disagg"):
            raise ValueError(f"mode must be colocated or disagg, got {self.mode!r}")
        if self.transfer not in ("shm", "tcp"):
            raise ValueError(f"transfer must be shm or tcp, got {self.transfer!r}")
        if self.transfer == "shm" and self.mode == "disagg" and self.engine.device.startswith("cuda"):
            # shm makes the decode instances' KV cache a host shared-memory segment
            raise ValueError("transfer shm shares the decode instances' KV cache in host memory, so it needs "
                             "device cpu; use transfer tcp with cuda")
        self.routing = routing_name(self.routing)
        if self.kv_store not in (None, "local"):
            raise ValueError(f"kv_store must be local (or unset), got {self.kv_store!r}")
        if not self.kv_store_gb > 0:
            raise ValueError(f"kv_store_gb must be positive, got {self.kv_store_gb}")
        counts = [self.instances] if self.mode == "colocated" else [self.prefill, self.decode]
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
            raise ValueError("instance counts must be positive integers")
        if self.lease_timeout_s < 0 or self.max_attempts < 1 or self.stats_interval_s <= 0:
            raise ValueError("lease_timeout_s >= 0, max_attempts >= 1 and stats_interval_s > 0 are required")

    def roles(self) -> list[str]:
        """Role of each instance, by instance id."""
        if self.mode == "colocated":
            return ["unified"] * self.instances
        return ["prefill"] * self.prefill + ["decode"] * self.decode
