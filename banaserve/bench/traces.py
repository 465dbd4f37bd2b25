"""Real request traces: find them, detect their format, load arrival times and lengths."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from banaserve.bench.spec import BenchError

# name -> file under the traces directory
KNOWN_TRACES: dict[str, str] = {
    "azure-code": "azure_llm_2023_code.csv",
    "azure-conv": "azure_llm_2023_conv.csv",
    "mooncake-conv": "mooncake_conversation.jsonl",
}

# Default SLOs (TTFT ms, TPOT ms) per trace. Code completion is interactive (tight TTFT); Mooncake
# prompts are long (~12k tokens) so their prefill is allowed more time. Override with --slo-*.
DEFAULT_SLO_MS: dict[str, tuple[float, float]] = {
    "azure-code": (1000.0, 50.0),
    "azure-conv": (2000.0, 100.0),
    "mooncake-conv": (5000.0, 100.0),
}
FALLBACK_SLO_MS = (2000.0, 100.0)

MOONCAKE_BLOCK_TOKENS = 512
AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
EPOCH = datetime(1970, 1, 1)


@dataclass(slots=True)
class Trace:
    """A loaded trace: arrivals (seconds from its first request) and token counts, in arrival order."""

    name: str
    path: str
    arrival_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    hash_ids: list[tuple[int, ...]] | None = None
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self.arrival_s)


def traces_dir() -> Path:
    """Where named traces live: $BANASERVE_TRACES, else `../shared/traces` next to the repo root."""
    env = os.environ.get("BANASERVE_TRACES")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "traces"


def resolve_trace(trace: str, trace_file: str | None = None) -> tuple[str, Path]:
    """Map a trace name or path (and an optional --trace-file override) to (name, file path)."""
    if trace_file:
        path = Path(trace_file)
        name = trace if trace in KNOWN_TRACES else path.stem
    elif trace in KNOWN_TRACES:
        name, path = trace, traces_dir() / KNOWN_TRACES[trace]
    else:
        name, path = Path(trace).stem, Path(trace)
        if not path.exists() and os.sep not in trace and "." not in trace:
            known = ", ".join(KNOWN_TRACES)
            raise BenchError(f"unknown trace {trace!r} (known: {known}, a file path, or synthetic:...)")
    if not path.is_file():
        hint = " (set BANASERVE_TRACES or --trace-file)" if trace in KNOWN_TRACES and not trace_file else ""
        raise BenchError(f"trace file not found: {path}{hint}")
    return name, path


def load_trace(trace: str, trace_file: str | None = None) -> Trace:
    """Load a named trace or a file in the Azure CSV or Mooncake JSONL format."""
    name, path = resolve_trace(trace, trace_file)
    return _load_path(name, str(path.resolve()))


@lru_cache(maxsize=8)
def _load_path(name: str, path: str) -> Trace:
    with open(path) as f:
        first = f.readline().strip()
    if first.startswith("{"):
        return _load_mooncake(name, path)
    if tuple(c.strip() for c in first.split(",")) == AZURE_HEADER:
        return _load_azure(name, path)
    raise BenchError(f"{path}: not an Azure CSV ({','.join(AZURE_HEADER)}) or Mooncake JSONL trace")


def _parse_azure_time(text: str) -> float:
    # "2023-11-16 18:17:03.9799600": seven fractional digits, which datetime.fromisoformat
    # rejects on Python 3.10, so split the fraction off.
    whole, _, frac = text.strip().partition(".")
    # Naive UTC arithmetic: a local-time .timestamp() would jump at DST changes.
    base = (datetime.strptime(whole, "%Y-%m-%d %H:%M:%S") - EPOCH).total_seconds()
    return base + (float("0." + frac) if frac else 0.0)


def _load_azure(name: str, path: str) -> Trace:
    times, inputs, outputs = [], [], []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            try:
                times.append(_parse_azure_time(row["TIMESTAMP"]))
                inputs.append(int(row["ContextTokens"]))
                outputs.append(int(row["GeneratedTokens"]))
            except (ValueError, TypeError) as e:
                raise BenchError(f"{path}:{lineno}: bad row: {e}") from None
    return _finish(name, path, times, inputs, outputs, None)


def _load_mooncake(name: str, path: str) -> Trace:
    times, inputs, outputs, hashes = [], [], [], []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                times.append(float(row["timestamp"]) / 1000.0)
                inputs.append(int(row["input_length"]))
                outputs.append(int(row["output_length"]))
                hashes.append(tuple(int(h) for h in row["hash_ids"]) if "hash_ids" in row else None)
            except (ValueError, TypeError, KeyError) as e:
                raise BenchError(f"{path}:{lineno}: bad record: {e!r}") from None
    hash_ids = hashes if all(h is not None for h in hashes) else None
    return _finish(name, path, times, inputs, outputs, hash_ids)


def _finish(name: str, path: str, times: list, inputs: list, outputs: list, hashes: list | None) -> Trace:
    if not times:
        raise BenchError(f"{path}: trace is empty")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order[0]]
    hash_ids = [hashes[i] for i in order] if hashes is not None else None
    return Trace(
        name=name,
        path=path,
        arrival_s=t,
        input_len=np.asarray(inputs, dtype=np.int64)[order],
        output_len=np.asarray(outputs, dtype=np.int64)[order],
        hash_ids=hash_ids,
    )


def default_slo_ms(trace_name: str) -> tuple[float, float]:
    """Per-trace default (TTFT ms, TPOT ms) SLO."""
    return DEFAULT_SLO_MS.get(trace_name, FALLBACK_SLO_MS)
