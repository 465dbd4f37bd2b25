"""Serving capacity: highest rate with >= 90% attainment, interpolated."""

from __future__ import annotations

import pytest

from banaserve.bench.spec import BenchError
from banaserve.bench.sweep import capacity, capacity_line, parse_rates


def test_interpolates_between_last_passing_and_next_rate():
    # 4 req/s: 95%, 8 req/s: 75% -> crosses 90% a quarter of the way: 4 + 4 * 0.05 / 0.20 = 5
    assert capacity([1, 2, 4, 8], [1.0, 0.99, 0.95, 0.75]) == pytest.approx(5.0)
    assert capacity([8, 4, 2, 1], [0.75, 0.95, 0.99, 1.0]) == pytest.approx(5.0)  # any order


def test_exactly_at_threshold_and_non_monotonic():
    assert capacity([1, 2, 3], [1.0, 0.9, 0.5]) == pytest.approx(2.0)
    # passes again at 4 after failing at 3: the highest passing rate counts
    assert capacity([1, 2, 3, 4, 5], [1.0, 0.95, 0.85, 0.92, 0.52]) == pytest.approx(4.05)


def test_all_pass_or_none_pass():
    assert capacity([1, 2], [1.0, 0.95]) == 2
    assert "capacity: >= 2" in capacity_line([1, 2], [1.0, 0.95])
    assert capacity([1, 2], [0.5, 0.1]) is None
    assert capacity_line([1, 2], [0.5, 0.1]).startswith("capacity: < 1 req/s")
    assert capacity_line([1, 2, 4, 8], [1.0, 0.99, 0.95, 0.75]).startswith("capacity: 5.000 req/s")


def test_parse_rates():
    assert parse_rates("4,1,2,2") == [1.0, 2.0, 4.0]
    for bad in ("1,x", "0,1", "-1", "inf", ""):
        with pytest.raises(BenchError):
            parse_rates(bad)
