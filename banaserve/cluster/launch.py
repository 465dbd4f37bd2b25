"""`build_engine_client`: the one factory the server's CLI calls to get an EngineClient."""

from __future__ import annotations

from banaserve.cluster.client import ClusterClient
from banaserve.cluster.config import ClusterConfig
from banaserve.engine.config import EngineConfig

ENGINE_FIELDS = ("model", "dtype", "device", "block_size", "max_num_seqs", "max_num_batched_tokens",
                 "num_kv_blocks", "max_model_len")
CLUSTER_FIELDS = ("mode", "instances", "prefill", "decode", "transfer")


def build_engine_client(engine: EngineConfig, mode: str = "colocated", instances: int = 1, prefill: int = 1,
                        decode: int = 1, transfer: str = "shm", name: str | None = None,
                        **cluster_options) -> ClusterClient:
    """A not-yet-started client of a router + instance processes (call `await client.start()`).

    `mode` colocated runs `instances` unified instances; disagg runs `prefill` + `decode`
    instances with KV pushed over `transfer` (shm or tcp). Other ClusterConfig fields
    (torch_threads, lease_timeout_s, routing, ...) may be passed as keywords.
    """
    config = ClusterConfig(engine=engine, mode=mode, instances=instances, prefill=prefill, decode=decode,
                           transfer=transfer, name=name, **cluster_options)
    return ClusterClient(config)


def build_from_args(args, **cluster_options) -> ClusterClient:
    """Same, from any object with ServeArgs-like attributes (model, dtype, ..., mode, transfer)."""
    def given(fields: tuple[str, ...]) -> dict:
        return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}

    name = getattr(args, "served_model_name", None) or getattr(args, "name", None)
    return build_engine_client(EngineConfig(**given(ENGINE_FIELDS)), name=name, **given(CLUSTER_FIELDS),
                               **cluster_options)
