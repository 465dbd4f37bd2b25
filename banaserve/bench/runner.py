"""One benchmark run in-process: build the workload, replay it, summarize, describe it in `meta`."""

from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from urllib.parse import urlparse

from banaserve.bench.client import ClientConfig
from banaserve.bench.loadgen import run_load
from banaserve.bench.metrics import SLO, Stats, Summary, summarize
from banaserve.bench.progress import Progress
from banaserve.bench.prompts import PromptConfig
from banaserve.bench.results import RequestRecord
from banaserve.bench.workload import WorkloadConfig, build_specs, describe


@dataclass(slots=True)
class RunConfig:
    """Everything one run needs."""

    workload: WorkloadConfig
    client: ClientConfig
    prompt: PromptConfig
    slo: SLO
    max_concurrency: int | None = None
    progress: bool = False
    label: str | None = None


def default_label(cfg: RunConfig) -> str:
    """endpoint host:port plus trace, e.g. "127.0.0.1:8000 azure-conv"."""
    where = urlparse(cfg.client.endpoint).netloc or cfg.client.endpoint
    return f"{where} {cfg.workload.trace_file or cfg.workload.trace}"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def run_bench(cfg: RunConfig, argv: list[str] | None = None) -> tuple[list[RequestRecord], Summary, dict]:
    """Run one benchmark; returns (records, summary, meta). Rate warnings also go to stderr."""
    specs = build_specs(cfg.workload)
    progress = Progress(len(specs)) if cfg.progress else None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    wl = cfg.workload
    out = asyncio.run(run_load(specs, cfg.client, cfg.prompt, cfg.max_concurrency, wl.rate, progress))
    summary = summarize(out.records, cfg.slo)
    for warning in out.rate_check.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    meta = {
        "label": cfg.label or default_label(cfg),
        "endpoint": cfg.client.endpoint,
        "model": out.model,
        "trace": wl.trace,
        "trace_file": wl.trace_file,
        "arrival": describe(wl),
        "rate": _finite(wl.rate),
        "burstiness": wl.burstiness,
        "time_scale": wl.time_scale,
        "duration_s": wl.duration_s,
        "num_requests": len(specs),
        "max_concurrency": out.max_concurrency,
        "max_input": wl.max_input,
        "max_output": wl.max_output,
        "length_scale": wl.length_scale,
        "block_tokens": wl.block_tokens,
        "vocab_size": cfg.prompt.vocab_size,
        "prompt_mode": "text" if cfg.client.prompt_text else "token_ids",
        "ignore_eos": cfg.client.ignore_eos,
        "timeout_s": cfg.client.timeout_s,
        "seed": wl.seed,
        "slo": asdict(cfg.slo),
        "started_at": started,
        "rate_check": asdict(out.rate_check),
        "argv": argv,
    }
    return out.records, summary, meta


def _fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


def _stats_row(name: str, s: Stats) -> str:
    return f"  {name:<5} {_fmt(s.mean):>10} {_fmt(s.median):>10} {_fmt(s.p90):>10} {_fmt(s.p99):>10}"


def format_summary(s: Summary) -> str:
    """A human-readable summary table."""
    slo = f"TTFT <= {_fmt(s.slo.ttft_ms, ' ms')}, TPOT <= {_fmt(s.slo.tpot_ms, ' ms')}"
    lines = [
        f"requests: {s.num_requests} ({s.completed} completed, {s.failed} failed) in {s.duration_s:.2f} s",
        f"throughput: {s.request_throughput:.3f} req/s, {s.output_throughput:.1f} output tok/s, "
        f"{s.input_throughput:.1f} input tok/s",
        f"  {'ms':<5} {'mean':>10} {'median':>10} {'p90':>10} {'p99':>10}",
        _stats_row("TTFT", s.ttft_ms),
        _stats_row("TPOT", s.tpot_ms),
        _stats_row("ITL", s.itl_ms),
        _stats_row("E2E", s.e2e_ms),
        f"SLO ({slo}): attainment {100 * s.slo_attainment:.1f}%, goodput {s.goodput:.3f} req/s",
    ]
    lines += [f"failed: {count} x {reason}" for reason, count in s.failures.items()]
    return "\n".join(lines)


def format_rate_check(rc: dict) -> str:
    """One line on whether the offered load was achieved (from meta["rate_check"])."""
    if rc.get("scheduled_rate") is None:
        return f"offered load: all requests due at once; send lag mean {rc['lag_mean_ms']:.1f} ms"
    achieved = rc.get("achieved_rate")
    got = "-" if achieved is None else f"{achieved:.3f}"
    state = "ok" if rc.get("ok") else "NOT HELD"
    return (
        f"offered load {state}: achieved {got} req/s vs scheduled {rc['scheduled_rate']:.3f} req/s, "
        f"send lag p99 {rc['lag_p99_ms']:.1f} ms, max {rc['lag_max_ms']:.1f} ms"
    )
