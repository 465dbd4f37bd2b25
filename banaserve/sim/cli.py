"""`banaserve simulate`: replay a trace on a simulated cluster; writes the same result JSON as bench."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from banaserve.bench.cli import TRACE_HELP, _slo
from banaserve.bench.loadgen import check_rate
from banaserve.bench.metrics import SLO, summarize
from banaserve.bench.prompts import PromptBuilder, PromptConfig
from banaserve.bench.results import write_result
from banaserve.bench.runner import format_summary
from banaserve.bench.spec import BenchError, RequestSpec
from banaserve.bench.traces import KNOWN_TRACES
from banaserve.bench.workload import WorkloadConfig, build_specs, describe
from banaserve.policies.routing import ROUTINGS
from banaserve.sim.cluster import COLOCATED, DISAGG
from banaserve.sim.setup import SimSetup, build_setup
from banaserve.sim.simulator import Simulator


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchError(message)


def build_parser() -> Parser:
    p = Parser(prog="banaserve simulate", description="Simulate a serving cluster on a cost model.")
    g = p.add_argument_group("cluster")
    g.add_argument("--model-config", default=None,
                   help="llama2-7b, llama2-13b, llama3-8b, llama3-70b, qwen2.5-14b, qwen2.5-32b, "
                        "qwen2.5-72b, a checkpoint dir or config.json (default with a profile: its model)")
    g.add_argument("--hardware", required=True,
                   help="a100-80g, h100, h200, a hardware JSON file, or a profile.json "
                        "from `banaserve profile`")
    g.add_argument("--mode", choices=(COLOCATED, DISAGG), default=COLOCATED)
    g.add_argument("--instances", type=int, default=None, help="colocated: number of instances (default 1)")
    g.add_argument("--prefill", type=int, default=None, help="disagg: prefill instances (default 1)")
    g.add_argument("--decode", type=int, default=None, help="disagg: decode instances (default 1)")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs per instance (roofline only)")
    g.add_argument("--link-gbps", type=float, default=100.0, help="KV link of each prefill instance, Gbit/s")
    g.add_argument("--link-latency-us", type=float, default=10.0, help="KV link latency, microseconds")
    g.add_argument("--routing", choices=[*ROUTINGS, *(r.replace("_", "-") for r in ROUTINGS)],
                   default="least_loaded")
    g.add_argument("--kv-store", choices=("local",), default=None,
                   help="a Global KV Cache Store every instance loads prefixes from and saves blocks to")
    g.add_argument("--kv-store-gb", type=float, default=64.0, help="store capacity")
    g.add_argument("--store-gbps", type=float, default=200.0, help="each instance's link to the store, Gbit/s")
    g = p.add_argument_group("engine (defaults: the engine's, or the profile's)")
    g.add_argument("--block-size", type=int, default=None)
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--max-num-seqs", type=int, default=None)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--num-kv-blocks", type=int, default=None,
                   help="per instance (default: memory left after weights, or the profile's)")
    g.add_argument("--no-prefix-caching", action="store_true")
    g = p.add_argument_group("workload (as banaserve bench)")
    g.add_argument("--trace", default=None, help=TRACE_HELP)
    g.add_argument("--trace-file", default=None, help="read the trace from this file")
    g.add_argument("--rate", type=float, default=None,
                   help="req/s of generated arrivals (default: as recorded)")
    g.add_argument("--burstiness", type=float, default=1.0, help="CV of gamma gaps: 1 Poisson, >1 bursty")
    g.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply recorded times (0.5: twice as fast)")
    g.add_argument("--duration", type=float, default=None, help="seconds of arrivals")
    g.add_argument("--num-requests", type=int, default=None)
    g.add_argument("--max-input", type=int, default=None, help="clip prompt lengths")
    g.add_argument("--max-output", type=int, default=None, help="clip output lengths")
    g.add_argument("--length-scale", type=float, default=1.0, help="multiply all lengths")
    g.add_argument("--block-tokens", type=int, default=512, help="tokens per Mooncake hash id block")
    g.add_argument("--vocab-size", type=int, default=1000, help="synthesized token ids are in [3, N)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("output")
    g.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in ms (default: per trace)")
    g.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in ms (default: per trace)")
    g.add_argument("--label", default=None, help="name of this run in plots (default: sim + cluster)")
    g.add_argument("--out", default=None, help="write the result JSON here")
    return p


def workload_config(args: argparse.Namespace) -> WorkloadConfig:
    if args.trace is None and args.trace_file is None:
        raise BenchError("--trace (or --trace-file) is required")
    return WorkloadConfig(
        trace=args.trace or args.trace_file, trace_file=args.trace_file, rate=args.rate,
        burstiness=args.burstiness, time_scale=args.time_scale, duration_s=args.duration,
        num_requests=args.num_requests, max_input=args.max_input, max_output=args.max_output,
        length_scale=args.length_scale, block_tokens=args.block_tokens, seed=args.seed,
    )


def cluster_text(setup: SimSetup) -> str:
    c = setup.cluster
    shape = f"{c.num_instances}x" if c.mode == COLOCATED else f"{c.num_prefill}P+{c.num_decode}D "
    tp = f" tp{setup.tp}" if setup.tp > 1 else ""
    return f"{c.mode} {shape}{setup.hardware_name}{tp} {setup.model.name}"


def run(args: argparse.Namespace, argv: list[str], wl: WorkloadConfig, setup: SimSetup, slo: SLO,
        specs: list[RequestSpec]) -> int:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prompts = PromptBuilder(PromptConfig(args.vocab_size, args.seed))
    sim = Simulator(setup.cluster, setup.instance, setup.cost, prompts)
    t0, c0 = time.perf_counter(), time.process_time()
    records = sim.run(specs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    summary = summarize(records, slo)
    rate_check = check_rate(records, wl.rate if wl.rate is not None and math.isfinite(wl.rate) else None)
    meta = {
        "label": args.label or f"sim {cluster_text(setup)}",
        "endpoint": None, "model": setup.model.name, "trace": wl.trace, "trace_file": wl.trace_file,
        "arrival": describe(wl), "rate": wl.rate if wl.rate is not None and math.isfinite(wl.rate) else None,
        "burstiness": wl.burstiness, "time_scale": wl.time_scale, "duration_s": wl.duration_s,
        "num_requests": len(specs), "max_concurrency": None, "max_input": wl.max_input,
        "max_output": wl.max_output, "length_scale": wl.length_scale, "block_tokens": wl.block_tokens,
        "vocab_size": args.vocab_size, "prompt_mode": "token_ids", "ignore_eos": True, "timeout_s": None,
        "seed": wl.seed, "slo": asdict(slo), "started_at": started, "rate_check": asdict(rate_check),
        "argv": ["simulate", *argv],
        "simulated": {
            "cluster": cluster_text(setup), "mode": setup.cluster.mode, "hardware": setup.hardware_name,
            "cost_model": setup.cost_kind, "tp": setup.tp, "instance": asdict(setup.instance),
            "link_gbps": args.link_gbps, "link_latency_us": args.link_latency_us,
            "routing": setup.cluster.routing, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "events": sim.num_events,
            "requests_per_wall_s": round(len(specs) / wall, 1) if wall > 0 else None,
            "instances": sim.instance_summary(),
            "reservation_refusals": sim.router.counters.reserve_refusals,
        },
    }
    if args.out:
        write_result(args.out, records, summary, meta)
    print(format_summary(summary))
    print(f"simulated {len(specs)} requests ({cluster_text(setup)}, {setup.cost_kind}) in {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU ({len(specs) / max(wall, 1e-9):.0f} req/s, {sim.num_events} events)")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `banaserve simulate`."""
    argv = list(argv)
    try:
        args = build_parser().parse_args(argv)
        if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise BenchError(f"--out directory {os.path.dirname(os.path.abspath(args.out))} does not exist")
        wl = workload_config(args)
        setup = build_setup(args)
        slo = _slo(args, wl.trace if wl.trace in KNOWN_TRACES else Path(wl.trace).stem)
        specs = build_specs(wl)
        PromptBuilder(PromptConfig(args.vocab_size, args.seed))  # checks --vocab-size
    except (BenchError, ValueError) as e:
        print(f"banaserve simulate: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    return run(args, argv, wl, setup, slo, specs)
