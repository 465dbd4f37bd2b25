"""Length distribution specs."""

from __future__ import annotations

import numpy as np
import pytest

from banaserve.bench.lengths import parse_dist, parse_synthetic
from banaserve.bench.spec import BenchError


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_fixed_and_uniform():
    assert parse_dist("fixed:16", "input").sample(rng(), 5).tolist() == [16] * 5
    u = parse_dist("uniform:3:5", "input").sample(rng(), 2000)
    assert set(u.tolist()) == {3, 4, 5}


def test_lognormal_median_and_minimum():
    x = parse_dist("lognormal:200:0.5", "output").sample(rng(), 20000)
    assert x.min() >= 1
    assert np.median(x) == pytest.approx(200, rel=0.03)
    # sigma is that of log(length)
    assert np.std(np.log(x)) == pytest.approx(0.5, rel=0.05)


def test_empirical_samples_the_right_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,100,7\n2023-11-16 18:17:04,300,9\n"
    )
    assert set(parse_dist(f"empirical:{path}", "input").sample(rng(), 100).tolist()) == {100, 300}
    assert set(parse_dist(f"empirical:{path}", "output").sample(rng(), 100).tolist()) == {7, 9}


@pytest.mark.parametrize(
    "spec",
    [
        "fixed",
        "fixed:0",
        "fixed:x",
        "uniform:5",
        "uniform:9:3",
        "lognormal:0:1",
        "normal:3:1",
        "fixed:-4",
        "empirical:",
        "fixed:inf",
    ],
)
def test_bad_distributions(spec):
    with pytest.raises(BenchError):
        parse_dist(spec, "input")


def test_synthetic_spec():
    inp, out = parse_synthetic("synthetic:input=fixed:16,output=uniform:1:4")
    assert (inp.kind, inp.params, out.kind, out.params) == ("fixed", (16.0,), "uniform", (1.0, 4.0))
    for bad in ("synthetic:input=fixed:16", "synthetic:in=fixed:1,output=fixed:1", "synthetic:"):
        with pytest.raises(BenchError):
            parse_synthetic(bad)
