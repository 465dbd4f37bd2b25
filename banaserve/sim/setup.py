"""Turn `banaserve simulate` options into a cluster, instance settings and a cost model."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

from banaserve.engine.config import EngineConfig
from banaserve.sim.cluster import COLOCATED, ClusterConfig
from banaserve.sim.cost_model import CostModel, RooflineCostModel
from banaserve.sim.hardware import hardware_from_dict, load_hardware
from banaserve.sim.instance import InstanceConfig
from banaserve.sim.model_configs import SimModel, load_sim_model
from banaserve.sim.profile_table import ProfileCostModel, ProfileTable, is_profile, profile_from_json


@dataclass(slots=True)
class SimSetup:
    cluster: ClusterConfig
    instance: InstanceConfig
    cost: CostModel
    model: SimModel
    hardware_name: str
    cost_kind: str  # "roofline" or "profile"
    tp: int = 1


def _read_json(path: str) -> object | None:
    """The JSON in `path`, or None when `path` is not a file."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _pick(value, default):
    return default if value is None else value


def cluster_config(args: argparse.Namespace, model: SimModel) -> ClusterConfig:
    if args.mode == COLOCATED:
        if args.prefill is not None or args.decode is not None:
            raise ValueError("--prefill/--decode need --mode disagg (colocated takes --instances)")
    elif args.instances is not None:
        raise ValueError("--mode disagg takes --prefill P --decode D, not --instances")
    if not (args.link_gbps > 0 and args.link_gbps < float("inf")):
        raise ValueError(f"--link-gbps must be a finite number > 0, got {args.link_gbps}")
    if not (args.link_latency_us >= 0 and args.link_latency_us < float("inf")):
        raise ValueError(f"--link-latency-us must be a finite number >= 0, got {args.link_latency_us}")
    cluster = ClusterConfig(
        mode=args.mode, num_instances=_pick(args.instances, 1), num_prefill=_pick(args.prefill, 1),
        num_decode=_pick(args.decode, 1), routing=args.routing, link_bandwidth=args.link_gbps * 1e9 / 8,
        link_latency_s=args.link_latency_us * 1e-6, kv_bytes_per_token=model.kv_bytes_per_token(),
        num_layers=model.config.num_layers,
    )
    if getattr(args, "kv_store", None):
        if not (args.kv_store_gb > 0 and args.store_gbps > 0):
            raise ValueError("--kv-store-gb and --store-gbps must be > 0")
        block_bytes = model.kv_bytes_per_token() * _pick(getattr(args, "block_size", None), 16)
        cluster.kv_store_blocks = max(1, int(args.kv_store_gb * (1 << 30) // block_bytes))
        cluster.store_bandwidth = args.store_gbps * 1e9 / 8
    cluster.validate()
    return cluster


def instance_config(args: argparse.Namespace, defaults: dict, num_blocks: int | None,
                    max_model_len: int) -> InstanceConfig:
    block_size = _pick(args.block_size, defaults["block_size"])
    if block_size <= 0:
        raise ValueError(f"--block-size must be positive, got {block_size}")
    if args.num_kv_blocks is not None:
        num_blocks = args.num_kv_blocks
    elif num_blocks is None:  # roofline: from memory, in tokens
        num_blocks = defaults["kv_tokens"] // block_size
    cfg = InstanceConfig(
        num_blocks=num_blocks, block_size=block_size,
        max_num_batched_tokens=_pick(args.max_num_batched_tokens, defaults["max_num_batched_tokens"]),
        max_num_seqs=_pick(args.max_num_seqs, defaults["max_num_seqs"]),
        max_model_len=_pick(args.max_model_len, max_model_len),
        enable_prefix_caching=not args.no_prefix_caching and defaults.get("enable_prefix_caching", True),
        enable_chunked_prefill=defaults.get("enable_chunked_prefill", True),
    )
    cfg.validate()
    return cfg


def build_setup(args: argparse.Namespace) -> SimSetup:
    """Raises ValueError with a one-line message on any bad option or file."""
    doc = _read_json(args.hardware)
    if is_profile(doc):
        table: ProfileTable = profile_from_json(doc, args.hardware)  # type: ignore[arg-type]
        if args.tp != 1:
            raise ValueError("--tp applies to the roofline model; a profile measured one instance as it is")
        model = load_sim_model(args.model_config) if args.model_config else table.sim_model()
        eng = table.engine
        defaults = {"block_size": eng.get("block_size", 16),
                    "max_num_batched_tokens": eng.get("max_num_batched_tokens", 2048),
                    "max_num_seqs": eng.get("max_num_seqs", 128),
                    "enable_prefix_caching": eng.get("enable_prefix_caching", True),
                    "enable_chunked_prefill": eng.get("enable_chunked_prefill", True)}
        instance = instance_config(args, defaults, eng.get("num_kv_blocks"),
                                   eng.get("max_model_len", model.max_model_len))
        name = f"profile:{table.meta.get('device', '?')}"
        cost = ProfileCostModel(table)
        return SimSetup(cluster_config(args, model), instance, cost, model, name, "profile")
    if args.model_config is None:
        raise ValueError("--model-config is required with a roofline hardware spec")
    model = load_sim_model(args.model_config)
    hw = hardware_from_dict(doc, args.hardware) if doc is not None else load_hardware(args.hardware)
    cost = RooflineCostModel(model, hw, args.tp)
    engine = EngineConfig()
    defaults = {"block_size": engine.block_size, "max_num_batched_tokens": engine.max_num_batched_tokens,
                "max_num_seqs": engine.max_num_seqs, "kv_tokens": cost.kv_capacity_tokens()}
    instance = instance_config(args, defaults, None, model.max_model_len)
    return SimSetup(cluster_config(args, model), instance, cost, model, hw.name, "roofline", args.tp)
