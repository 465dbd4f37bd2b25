"""Replay request specs against an endpoint on a precomputed schedule and check the rate held."""

from __future__ import annotations

import asyncio
import gc
import math
import resource
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from banaserve.bench.client import (
    ClientConfig,
    base_url,
    encode_body,
    fetch_model,
    headers,
    send_one,
    send_time_trace,
)
from banaserve.bench.progress import Progress
from banaserve.bench.prompts import PromptBuilder, PromptConfig
from banaserve.bench.results import RequestRecord
from banaserve.bench.spec import BenchError, RequestSpec

PREBUILD_TOKEN_LIMIT = 50_000_000  # above this, bodies are built just ahead of their send time
RATE_TOLERANCE = 0.02  # achieved vs scheduled arrival rate
# P99 of (actual send - scheduled arrival). A few ms of jitter is normal on a busy host and is
# always recorded; a sustained backlog (overloaded client, --max-concurrency full) shows up as more.
LAG_WARN_MS = 50.0


@dataclass(slots=True)
class RateCheck:
    """Did the generator offer the load it was asked to? Rates are (n - 1) / span of the times."""

    requested_rate: float | None  # --rate, None when replaying recorded arrivals
    scheduled_rate: float | None  # of the schedule; None when everything was due at once
    achieved_rate: float | None  # of the actual sends
    lag_mean_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    ok: bool = True
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RunOutput:
    """Records of one run, whether the rate held, and what was used."""

    records: list[RequestRecord]
    rate_check: RateCheck
    model: str
    max_concurrency: int | None
    t0_perf: float = 0.0  # time.perf_counter() at t=0 (CLOCK_MONOTONIC: comparable across local processes)


def _span_rate(times: np.ndarray) -> float | None:
    span = float(times.max() - times.min()) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else None


def check_rate(records: list[RequestRecord], requested_rate: float | None) -> RateCheck:
    """Compare actual send times to the schedule; warn when the offered load was not achieved."""
    arrivals = np.array([r.arrival_s for r in records])
    sends = np.array([r.send_s for r in records if r.send_s is not None])
    lags = np.array([r.send_s - r.arrival_s for r in records if r.send_s is not None]) * 1000.0
    scheduled, achieved = _span_rate(arrivals), _span_rate(sends)
    check = RateCheck(
        requested_rate=requested_rate
        if requested_rate is not None and math.isfinite(requested_rate)
        else None,
        scheduled_rate=scheduled,
        achieved_rate=achieved,
        lag_mean_ms=float(lags.mean()) if len(lags) else 0.0,
        lag_p99_ms=float(np.percentile(lags, 99)) if len(lags) else 0.0,
        lag_max_ms=float(lags.max()) if len(lags) else 0.0,
    )
    if scheduled is None:  # all due at once: there is no rate to hold
        return check
    if achieved is None or achieved < scheduled * (1 - RATE_TOLERANCE):
        got = "n/a" if achieved is None else f"{achieved:.3f}"
        check.warnings.append(
            f"achieved arrival rate {got} req/s is more than 2% below the schedule's {scheduled:.3f}"
        )
    if check.lag_p99_ms > LAG_WARN_MS:
        check.warnings.append(
            f"sends lagged the schedule: p99 {check.lag_p99_ms:.1f} ms, max {check.lag_max_ms:.1f} ms "
            "(client overloaded or --max-concurrency reached)"
        )
    check.ok = not check.warnings
    return check


def _raise_fd_limit(want: int) -> int:
    """Raise the open-file limit toward `want` connections; returns how many connections fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want + 256 if hard == resource.RLIM_INFINITY else min(hard, want + 256)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, soft - 256)


async def run_load(
    specs: list[RequestSpec],
    cfg: ClientConfig,
    prompt_cfg: PromptConfig,
    max_concurrency: int | None = None,
    requested_rate: float | None = None,
    progress: Progress | None = None,
) -> RunOutput:
    """Send every spec at its arrival time (relative to now) and record what happened."""
    if max_concurrency is not None and max_concurrency < 1:
        raise BenchError(f"--max-concurrency must be >= 1, got {max_concurrency}")
    if not (cfg.timeout_s > 0):
        raise BenchError(f"--timeout must be > 0, got {cfg.timeout_s}")
    # Without --max-concurrency every request may be open at once: make sure the sockets fit,
    # else the connector would queue requests after their send time was taken.
    fit = _raise_fd_limit(max_concurrency or len(specs))
    limit = min(max_concurrency or len(specs), fit)
    prompts = PromptBuilder(prompt_cfg)
    url = base_url(cfg.endpoint) + "/v1/completions"
    hdrs = headers(cfg)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, force_close=False)
    no_timeout = aiohttp.ClientTimeout(total=None)
    trace = [send_time_trace()]
    session = aiohttp.ClientSession(connector=connector, timeout=no_timeout, trace_configs=trace)
    async with session:
        model = cfg.model or await fetch_model(session, cfg)
        prebuild = sum(s.input_len for s in specs) <= PREBUILD_TOKEN_LIMIT
        bodies = [encode_body(s, cfg, model, prompts) for s in specs] if prebuild else None
        records = [RequestRecord(s.index, s.arrival_s, s.input_len, s.output_len) for s in specs]
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        sem = asyncio.Semaphore(limit) if limit < len(specs) else None
        gc.collect()
        gc.freeze()  # setup objects never need scanning again: shorter pauses while streaming

        async def one(i: int, body: bytes) -> None:
            if sem is None:
                await send_one(session, url, body, hdrs, records[i], t0, timeout)
            else:
                async with sem:
                    await send_one(session, url, body, hdrs, records[i], t0, timeout)
            if progress is not None:
                progress.done(records[i])

        tasks: list[asyncio.Task] = []
        t0 = time.perf_counter()
        if progress is not None:
            progress.start(t0)
        for i, spec in enumerate(specs):
            body = bodies[i] if bodies is not None else encode_body(spec, cfg, model, prompts)
            delay = t0 + spec.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, body)))
        await asyncio.gather(*tasks)
        if progress is not None:
            progress.stop()
    gc.unfreeze()
    concurrency = limit if sem is not None else None
    return RunOutput(records, check_rate(records, requested_rate), model, concurrency, t0)
