"""Arrival schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from banaserve.bench.arrivals import count_for_duration, generated_arrivals, scaled_arrivals
from banaserve.bench.spec import BenchError


def test_mean_rate_is_exact():
    for cv in (0.0, 1.0, 3.0):
        t = generated_arrivals(1001, 8.0, cv, np.random.default_rng(1))
        assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
        assert t[-1] == pytest.approx(1000 / 8.0)  # (n - 1) gaps of mean 1/rate


def test_burstiness_is_the_cv_of_gaps():
    for cv in (0.5, 1.0, 2.0):
        gaps = np.diff(generated_arrivals(50001, 10.0, cv, np.random.default_rng(2)))
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    gaps = np.diff(generated_arrivals(11, 4.0, 0.0, np.random.default_rng(0)))
    np.testing.assert_allclose(gaps, 0.25)


def test_infinite_rate_sends_everything_at_once():
    assert generated_arrivals(5, math.inf, 1.0, np.random.default_rng(0)).tolist() == [0.0] * 5


def test_scaled_and_duration():
    assert scaled_arrivals(np.array([0.0, 1.0, 3.0]), 0.5).tolist() == [0.0, 0.5, 1.5]
    assert count_for_duration(2.5, 10.0) == 25
    with pytest.raises(BenchError):
        count_for_duration(math.inf, 10.0)


@pytest.mark.parametrize("rate,cv", [(-1.0, 1.0), (0.0, 1.0), (math.nan, 1.0), (1.0, -0.5)])
def test_bad_rates(rate, cv):
    with pytest.raises(BenchError):
        generated_arrivals(3, rate, cv, np.random.default_rng(0))
