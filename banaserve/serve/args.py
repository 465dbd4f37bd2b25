"""Settings of `banaserve serve`: the HTTP server, the cluster shape and the engine of every instance.

One flat dataclass so that the CLI, the tests and the cluster launcher agree on one set of names.
The cluster launcher reads the engine fields through `engine_config()` and the cluster shape
from `mode`, `instances`, `prefill`, `decode` and `transfer`.
"""

from __future__ import annotations

from dataclasses import dataclass

from banaserve.engine.config import EngineConfig
from banaserve.policies.routing import routing_name

MODES = ("colocated", "disagg")
TRANSFERS = ("shm", "tcp")


@dataclass(slots=True)
class ServeArgs:
    """Everything `banaserve serve` is started with (model None: the default small checkpoint)."""

    # model
    model: str | None = None
    served_model_name: str | None = None  # default: the checkpoint directory's name
    # HTTP
    host: str = "127.0.0.1"  # loopback unless asked: an open port serves anyone who finds it
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 4 << 20
    max_pending: int = 1024  # requests generating or waiting at once; beyond it 429
    graceful_shutdown_s: float = 3.0
    log_level: str = "info"
    # cluster shape
    mode: str = "colocated"
    instances: int = 1
    prefill: int = 1
    decode: int = 1
    transfer: str = "shm"
    routing: str = "load_aware"
    kv_store: str | None = None
    kv_store_gb: float = 4.0
    # engine of each instance (see EngineConfig)
    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    num_kv_blocks: int | None = None
    kv_cache_gb: float = 2.0
    prefault_kv_cache: bool = True
    retain_freed_memory: bool = True
    max_model_len: int | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError on settings no server can run with."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}, got {self.transfer!r}")
        for name in ("instances", "prefill", "decode", "max_body_bytes", "max_pending"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        self.routing = routing_name(self.routing)
        if self.kv_store not in (None, "local"):
            raise ValueError(f"kv_store must be local, got {self.kv_store!r}")
        if self.graceful_shutdown_s < 0:
            raise ValueError("graceful_shutdown_s must be >= 0")
        self.engine_config().validate()

    def engine_config(self) -> EngineConfig:
        """The engine settings every instance is built with."""
        return EngineConfig(
            model=self.model, dtype=self.dtype, device=self.device, block_size=self.block_size,
            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            num_kv_blocks=self.num_kv_blocks, kv_cache_gb=self.kv_cache_gb,
            prefault_kv_cache=self.prefault_kv_cache, retain_freed_memory=self.retain_freed_memory,
            max_model_len=self.max_model_len, seed=self.seed,
        )
