"""Rate sweeps: one run per rate, a table, and the serving capacity at 90% SLO attainment."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import msgspec

from banaserve.bench.results import write_result
from banaserve.bench.runner import RunConfig, run_bench
from banaserve.bench.spec import BenchError

CAPACITY_THRESHOLD = 0.9


@dataclass(slots=True)
class SweepPoint:
    """One swept rate and its headline numbers."""

    rate: float
    slo_attainment: float
    goodput: float
    p99_ttft_ms: float | None
    mean_tpot_ms: float | None
    failed: int
    path: str


def parse_rates(text: str) -> list[float]:
    """ "1,2,4,8" -> [1.0, 2.0, 4.0, 8.0]; every rate finite and > 0."""
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise BenchError(f"bad rate {part!r} in --rates {text!r}") from None
        if not (rate > 0 and math.isfinite(rate)):
            raise BenchError(f"--rates must be finite numbers > 0, got {part!r}")
        rates.append(rate)
    return sorted(set(rates))


def capacity(
    rates: list[float], attainments: list[float], threshold: float = CAPACITY_THRESHOLD
) -> float | None:
    """Highest rate with attainment >= threshold, interpolated linearly toward the next (failing) rate.

    None when no rate meets the threshold; the highest swept rate when that one meets it (the
    sweep did not go high enough to find the limit).
    """
    points = sorted(zip(rates, attainments, strict=True))
    passing = [i for i, (_, a) in enumerate(points) if a >= threshold]
    if not passing:
        return None
    i = passing[-1]
    if i == len(points) - 1:
        return points[i][0]
    (r0, a0), (r1, a1) = points[i], points[i + 1]
    return r0 + (a0 - threshold) * (r1 - r0) / (a0 - a1)


def capacity_line(rates: list[float], attainments: list[float], threshold: float = CAPACITY_THRESHOLD) -> str:
    """The sweep's last line of output."""
    cap = capacity(rates, attainments, threshold)
    pct = f"{100 * threshold:g}%"
    if cap is None:
        return f"capacity: < {min(rates):g} req/s (no swept rate reached {pct} SLO attainment)"
    if cap == max(rates):
        return (
            f"capacity: >= {cap:g} req/s (the highest swept rate reached {pct} SLO attainment: sweep higher)"
        )
    return f"capacity: {cap:.3f} req/s (highest rate with >= {pct} SLO attainment, interpolated)"


def format_table(points: list[SweepPoint]) -> str:
    """rate, attainment %, goodput, P99 TTFT, mean TPOT and failures, one row per rate."""

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    lines = [f"{'rate':>8} {'attain%':>8} {'goodput':>8} {'p99 TTFT':>10} {'mean TPOT':>10} {'failed':>7}"]
    for p in points:
        lines.append(
            f"{p.rate:>8g} {100 * p.slo_attainment:>8.1f} {p.goodput:>8.3f} "
            f"{f(p.p99_ttft_ms):>10} {f(p.mean_tpot_ms):>10} {p.failed:>7}"
        )
    return "\n".join(lines)


def run_sweep(
    base: RunConfig, rates: list[float], out_dir: Path, argv: list[str] | None = None
) -> list[SweepPoint]:
    """Run `base` once per rate (generated arrivals), writing out_dir/rate-R.json and sweep.json."""
    points = []
    for rate in rates:
        cfg = dataclasses.replace(base, workload=dataclasses.replace(base.workload, rate=rate))
        print(f"--- rate {rate:g} req/s", flush=True)
        records, summary, meta = run_bench(cfg, argv)
        path = out_dir / f"rate-{rate:g}.json"
        write_result(path, records, summary, meta)
        points.append(
            SweepPoint(
                rate=rate,
                slo_attainment=summary.slo_attainment,
                goodput=summary.goodput,
                p99_ttft_ms=summary.ttft_ms.p99,
                mean_tpot_ms=summary.tpot_ms.mean,
                failed=summary.failed,
                path=str(path),
            )
        )
    cap = capacity([p.rate for p in points], [p.slo_attainment for p in points])
    doc = {
        "schema": "banaserve-bench-sweep/1",
        "threshold": CAPACITY_THRESHOLD,
        "capacity": cap,
        "slo": dataclasses.asdict(base.slo),
        "points": [dataclasses.asdict(p) for p in points],
    }
    (out_dir / "sweep.json").write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=1))
    return points
