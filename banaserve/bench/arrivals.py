"""Arrival schedules: as recorded (time-scaled) or generated Poisson / gamma processes."""

from __future__ import annotations

import math

import numpy as np

from banaserve.bench.spec import BenchError


def check_rate(rate: float, burstiness: float) -> None:
    """Reject rates and burstiness values that cannot make a schedule."""
    if math.isnan(rate) or rate <= 0:
        raise BenchError(f"--rate must be > 0 (or inf), got {rate}")
    if not math.isfinite(burstiness) or burstiness < 0:
        raise BenchError(f"--burstiness must be a finite number >= 0, got {burstiness}")


def generated_arrivals(n: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """`n` arrival times starting at 0 with gamma gaps of coefficient of variation `burstiness`.

    burstiness 1 is Poisson, > 1 burstier, 0 evenly spaced; rate inf sends everything at t=0.
    The gaps are rescaled so their mean is exactly 1/rate: a sweep point at rate R then really
    offers R req/s instead of R plus the sampling noise of a finite schedule (~1/sqrt(n)).
    """
    check_rate(rate, burstiness)
    if n <= 0:
        return np.zeros(0)
    if math.isinf(rate) or n == 1:
        return np.zeros(n)
    if burstiness == 0:
        gaps = np.full(n - 1, 1.0 / rate)
    else:
        shape = 1.0 / burstiness**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n - 1)
        gaps *= (1.0 / rate) / gaps.mean()
    return np.concatenate([[0.0], np.cumsum(gaps)])


def scaled_arrivals(recorded_s: np.ndarray, time_scale: float) -> np.ndarray:
    """Recorded arrival times multiplied by `time_scale` (0.5 replays twice as fast)."""
    if not math.isfinite(time_scale) or time_scale < 0:
        raise BenchError(f"--time-scale must be a finite number >= 0, got {time_scale}")
    return np.asarray(recorded_s, dtype=np.float64) * time_scale


def count_for_duration(rate: float, duration_s: float) -> int:
    """Requests that a generated schedule at `rate` offers in `duration_s` seconds."""
    if math.isinf(rate):
        raise BenchError("--duration needs a finite --rate (or recorded arrivals)")
    return max(1, round(rate * duration_s))
