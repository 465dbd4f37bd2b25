"""Length distributions for synthetic workloads: fixed, uniform, lognormal, or empirical from a trace."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from banaserve.bench.spec import BenchError
from banaserve.bench.traces import load_trace

DIST_HELP = "fixed:N | uniform:LO:HI | lognormal:MEDIAN:SIGMA | empirical:TRACE"


@dataclass(slots=True)
class LengthDist:
    """A distribution of token counts; `sample` always returns integers >= 1."""

    kind: str
    params: tuple[float, ...] = ()
    values: np.ndarray | None = None  # empirical samples
    text: str = ""

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            out = np.full(n, self.params[0])
        elif self.kind == "uniform":
            lo, hi = self.params
            out = rng.integers(int(lo), int(hi) + 1, size=n)
        elif self.kind == "lognormal":
            median, sigma = self.params
            out = np.rint(rng.lognormal(math.log(median), sigma, size=n))
        else:
            assert self.values is not None
            out = rng.choice(self.values, size=n, replace=True)
        return np.maximum(np.asarray(out, dtype=np.int64), 1)


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BenchError(f"bad number {text!r} in length distribution {spec!r} ({DIST_HELP})") from None
    if not math.isfinite(value) or value < 0:
        raise BenchError(f"length distribution {spec!r}: {text!r} must be a finite number >= 0")
    return value


def parse_dist(spec: str, column: str) -> LengthDist:
    """Parse a distribution spec. `column` ("input" or "output") picks the trace column for empirical."""
    kind, _, rest = spec.partition(":")
    if kind == "empirical":
        if not rest:
            raise BenchError(f"empirical length distribution needs a trace: {spec!r}")
        trace = load_trace(rest)
        values = trace.input_len if column == "input" else trace.output_len
        return LengthDist("empirical", values=values, text=spec)
    args = rest.split(":") if rest else []
    want = {"fixed": 1, "uniform": 2, "lognormal": 2}.get(kind)
    if want is None:
        raise BenchError(f"unknown length distribution {spec!r} ({DIST_HELP})")
    if len(args) != want:
        raise BenchError(f"length distribution {spec!r} needs {want} parameter(s) ({DIST_HELP})")
    params = tuple(_number(a, spec) for a in args)
    if kind == "fixed" and params[0] < 1:
        raise BenchError(f"fixed length must be >= 1: {spec!r}")
    if kind == "uniform" and not 1 <= params[0] <= params[1]:
        raise BenchError(f"uniform needs 1 <= LO <= HI: {spec!r}")
    if kind == "lognormal" and params[0] < 1:
        raise BenchError(f"lognormal median must be >= 1: {spec!r}")
    return LengthDist(kind, params=params, text=spec)


def parse_synthetic(trace: str) -> tuple[LengthDist, LengthDist]:
    """Parse `synthetic:input=DIST,output=DIST` into (input, output) distributions."""
    body = trace.removeprefix("synthetic:")
    fields: dict[str, str] = {}
    for part in body.split(","):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in ("input", "output"):
            raise BenchError(f"bad synthetic trace {trace!r}: want synthetic:input=DIST,output=DIST")
        fields[key.strip()] = value.strip()
    if set(fields) != {"input", "output"}:
        raise BenchError(f"synthetic trace {trace!r} needs both input= and output=")
    return parse_dist(fields["input"], "input"), parse_dist(fields["output"], "output")
