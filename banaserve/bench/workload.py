"""Turn a trace or synthetic spec plus arrival and length options into a list of request specs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from banaserve.bench.arrivals import count_for_duration, generated_arrivals, scaled_arrivals
from banaserve.bench.lengths import parse_synthetic
from banaserve.bench.spec import BenchError, RequestSpec
from banaserve.bench.traces import MOONCAKE_BLOCK_TOKENS, load_trace

DEFAULT_SYNTHETIC_REQUESTS = 100


@dataclass(slots=True)
class WorkloadConfig:
    """What to send. `rate=None` replays recorded arrivals (traces) or sends all at once (synthetic)."""

    trace: str
    trace_file: str | None = None
    rate: float | None = None
    burstiness: float = 1.0
    time_scale: float = 1.0
    duration_s: float | None = None
    num_requests: int | None = None
    max_input: int | None = None
    max_output: int | None = None
    length_scale: float = 1.0
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    seed: int = 0


def _check(cfg: WorkloadConfig) -> None:
    if cfg.num_requests is not None and cfg.num_requests < 1:
        raise BenchError(f"--num-requests must be >= 1, got {cfg.num_requests}")
    if cfg.duration_s is not None and not (cfg.duration_s > 0 and math.isfinite(cfg.duration_s)):
        raise BenchError(f"--duration must be a finite number > 0, got {cfg.duration_s}")
    if not (cfg.length_scale > 0 and math.isfinite(cfg.length_scale)):
        raise BenchError(f"--length-scale must be a finite number > 0, got {cfg.length_scale}")
    for name, value in (("--max-input", cfg.max_input), ("--max-output", cfg.max_output)):
        if value is not None and value < 1:
            raise BenchError(f"{name} must be >= 1, got {value}")
    if not (math.isfinite(cfg.burstiness) and cfg.burstiness >= 0):
        raise BenchError(f"--burstiness must be a finite number >= 0, got {cfg.burstiness}")
    if cfg.rate is not None and cfg.time_scale != 1.0:
        raise BenchError("--time-scale applies to recorded arrivals; it cannot be combined with --rate")
    if cfg.block_tokens < 1:
        raise BenchError(f"--block-tokens must be >= 1, got {cfg.block_tokens}")


def _generated_count(cfg: WorkloadConfig, rate: float, default: int) -> int:
    counts = []
    if cfg.num_requests is not None:
        counts.append(cfg.num_requests)
    if cfg.duration_s is not None:
        counts.append(count_for_duration(rate, cfg.duration_s))
    return min(counts) if counts else default


def _rng(cfg: WorkloadConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream])


def _scale_clip(lengths: np.ndarray, scale: float, limit: int | None) -> np.ndarray:
    out = np.rint(np.asarray(lengths, dtype=np.float64) * scale).astype(np.int64)
    if limit is not None:
        out = np.minimum(out, limit)
    return np.maximum(out, 1)


def build_specs(cfg: WorkloadConfig) -> list[RequestSpec]:
    """Request specs in arrival order, arrival times relative to the first request.

    Trace lengths are multiplied by `length_scale` and clipped to [1, max_*]. For traces with
    hash ids, input lengths are also scaled by block_tokens/512 so each request still spans the
    same blocks, just smaller ones (for small models).
    """
    _check(cfg)
    hash_ids: list[tuple[int, ...]] | None = None
    input_scale = cfg.length_scale
    if cfg.trace.startswith("synthetic:"):
        input_dist, output_dist = parse_synthetic(cfg.trace)
        rate = math.inf if cfg.rate is None else cfg.rate
        n = _generated_count(cfg, rate, DEFAULT_SYNTHETIC_REQUESTS)
        arrivals = generated_arrivals(n, rate, cfg.burstiness, _rng(cfg, 0))
        inputs = input_dist.sample(_rng(cfg, 1), n)
        outputs = output_dist.sample(_rng(cfg, 2), n)
    else:
        trace = load_trace(cfg.trace, cfg.trace_file)
        if cfg.rate is None:
            arrivals = scaled_arrivals(trace.arrival_s, cfg.time_scale)
            keep = len(arrivals)
            if cfg.duration_s is not None:
                keep = int(np.searchsorted(arrivals, cfg.duration_s, side="left"))
            if cfg.num_requests is not None:
                keep = min(keep, cfg.num_requests)
            keep = max(keep, 1)
            arrivals = arrivals[:keep]
            rows = np.arange(keep)
        else:
            n = _generated_count(cfg, cfg.rate, len(trace))
            arrivals = generated_arrivals(n, cfg.rate, cfg.burstiness, _rng(cfg, 0))
            # Lengths (and hash ids) in trace order, wrapping around: keeps conversations together.
            rows = np.arange(n) % len(trace)
        inputs = trace.input_len[rows]
        outputs = trace.output_len[rows]
        if trace.hash_ids is not None:
            hash_ids = [trace.hash_ids[i] for i in rows]
            input_scale *= cfg.block_tokens / trace.block_tokens
    inputs = _scale_clip(inputs, input_scale, cfg.max_input)
    outputs = _scale_clip(outputs, cfg.length_scale, cfg.max_output)
    return [
        RequestSpec(
            index=i,
            arrival_s=float(arrivals[i]),
            input_len=int(inputs[i]),
            output_len=int(outputs[i]),
            hash_ids=hash_ids[i] if hash_ids is not None else None,
            block_tokens=cfg.block_tokens,
        )
        for i in range(len(arrivals))
    ]


def describe(cfg: WorkloadConfig) -> str:
    """Short text for the arrival process, used in labels and the result's meta."""
    if cfg.rate is None:
        if cfg.trace.startswith("synthetic:"):
            return "all at once"
        return f"recorded x{cfg.time_scale:g}"
    process = "poisson" if cfg.burstiness == 1 else f"gamma(cv={cfg.burstiness:g})"
    return f"{process} {cfg.rate:g} req/s"
