"""Metric math (DESIGN.md definitions): TTFT, TPOT, ITL, E2E, throughput, SLO attainment, goodput."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from banaserve.bench.results import RequestRecord


@dataclass(slots=True)
class SLO:
    """Latency objectives in milliseconds; None means no limit."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None


@dataclass(slots=True)
class Stats:
    """Distribution of one latency in milliseconds. Percentiles interpolate linearly between ranks."""

    count: int = 0
    mean: float | None = None
    median: float | None = None
    p90: float | None = None
    p99: float | None = None


@dataclass(slots=True)
class Summary:
    """Aggregate metrics of one run. Latency stats cover completed requests only; failed ones
    count against SLO attainment and are listed in `failures` (reason -> count)."""

    num_requests: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # completed requests / s
    input_throughput: float  # prompt tokens of completed requests / s
    output_throughput: float  # output tokens of completed requests / s
    total_input_tokens: int
    total_output_tokens: int
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2e_ms: Stats
    slo: SLO
    slo_met: int
    slo_attainment: float  # slo_met / num_requests
    goodput: float  # slo_met / duration_s
    failures: dict[str, int] = field(default_factory=dict)


def ttft_s(r: RequestRecord) -> float | None:
    """Time to first token, from the moment the request was sent."""
    if r.send_s is None or r.first_token_s is None:
        return None
    return r.first_token_s - r.send_s


def e2e_s(r: RequestRecord) -> float | None:
    """End-to-end latency, from send to the end of the stream."""
    if r.send_s is None or r.end_s is None:
        return None
    return r.end_s - r.send_s


def tpot_s(r: RequestRecord) -> float | None:
    """(E2E - TTFT) / (output tokens - 1); undefined (None) for outputs of fewer than 2 tokens."""
    ttft, e2e = ttft_s(r), e2e_s(r)
    if ttft is None or e2e is None or r.output_tokens < 2:
        return None
    return (e2e - ttft) / (r.output_tokens - 1)


def itls_s(r: RequestRecord) -> list[float]:
    """Every gap between consecutive token-carrying chunks."""
    t = r.token_times_s
    return [b - a for a, b in zip(t[:-1], t[1:], strict=True)]


def meets_slo(r: RequestRecord, slo: SLO) -> bool:
    """Completed, TTFT within its SLO, and TPOT within its SLO (always true for 1-token outputs)."""
    if not r.ok:
        return False
    ttft = ttft_s(r)
    if ttft is None:
        return False
    if slo.ttft_ms is not None and ttft * 1000.0 > slo.ttft_ms:
        return False
    tpot = tpot_s(r)
    return slo.tpot_ms is None or tpot is None or tpot * 1000.0 <= slo.tpot_ms


def stats_ms(values_s: list[float]) -> Stats:
    """Mean, median, P90 and P99 of values given in seconds, reported in milliseconds."""
    if not values_s:
        return Stats()
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    median, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Stats(count=len(ms), mean=float(ms.mean()), median=float(median), p90=float(p90), p99=float(p99))


def run_duration_s(records: list[RequestRecord]) -> float:
    """From the first scheduled arrival to the last request's end."""
    if not records:
        return 0.0
    start = min(r.arrival_s for r in records)
    ends = [t for r in records for t in (r.end_s, r.send_s, r.arrival_s) if t is not None]
    return max(ends) - start


def summarize(records: list[RequestRecord], slo: SLO, duration_s: float | None = None) -> Summary:
    """Aggregate per-request records. `duration_s` defaults to `run_duration_s(records)`."""
    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    duration = run_duration_s(records) if duration_s is None else duration_s
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    input_tokens = sum(r.prompt_tokens if r.prompt_tokens is not None else r.input_len for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    met = sum(meets_slo(r, slo) for r in records)

    def collect(fn) -> list[float]:
        return [v for v in map(fn, done) if v is not None]

    return Summary(
        num_requests=len(records),
        completed=len(done),
        failed=len(failed),
        duration_s=duration,
        request_throughput=per_s(len(done)),
        input_throughput=per_s(input_tokens),
        output_throughput=per_s(output_tokens),
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        ttft_ms=stats_ms(collect(ttft_s)),
        tpot_ms=stats_ms(collect(tpot_s)),
        itl_ms=stats_ms([gap for r in done for gap in itls_s(r)]),
        e2e_ms=stats_ms(collect(e2e_s)),
        slo=slo,
        slo_met=met,
        slo_attainment=met / len(records) if records else 0.0,
        goodput=per_s(met),
        failures=dict(Counter(r.error or "unknown" for r in failed).most_common()),
    )
