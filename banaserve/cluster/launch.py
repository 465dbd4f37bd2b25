"""`build_engine_client`: the one factory the server's CLI calls to get an EngineClient."""

from __future__ import annotations

from banaserve.cluster.client import ClusterClient
from banaserve.cluster.config import ClusterConfig
from banaserve.cluster.engine_client import EngineClient, LocalEngineClient
from banaserve.engine.config import EngineConfig

CLUSTER_FIELDS = ("mode", "instances", "prefill", "decode", "transfer", "routing", "kv_store", "kv_store_gb")


def build_engine_client(args: ClusterConfig | EngineConfig | object, *, in_process_single: bool = True,
                        **cluster_options) -> EngineClient:
    """A not-yet-started EngineClient (call `await client.start()`).

    `args` is a ClusterConfig, an EngineConfig (cluster fields then come as keywords), or any
    object shaped like serve's ServeArgs (`engine_config()`, `served_model_name`, mode,
    instances, prefill, decode, transfer). `--mode colocated --instances 1` runs the engine in
    this process (LocalEngineClient) unless `in_process_single` is False; every other shape is
    a router here plus instance processes (ClusterClient). Extra keywords are ClusterConfig
    fields (torch_threads, lease_timeout_s, routing, ...).
    """
    if isinstance(args, ClusterConfig):
        config = args
    elif isinstance(args, EngineConfig):
        config = ClusterConfig(engine=args, **cluster_options)
    else:
        fields = {f: getattr(args, f) for f in CLUSTER_FIELDS if getattr(args, f, None) is not None}
        name = getattr(args, "served_model_name", None)
        config = ClusterConfig(engine=args.engine_config(), name=name, **fields, **cluster_options)
    config.validate()
    if in_process_single and config.mode == "colocated" and config.instances == 1 and config.kv_store is None:
        return LocalEngineClient(config.engine, name=config.name)
    return ClusterClient(config)
