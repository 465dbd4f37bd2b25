"""Trace discovery, format detection and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from banaserve.bench.spec import BenchError
from banaserve.bench.traces import KNOWN_TRACES, load_trace, resolve_trace, traces_dir

HAVE_TRACES = all((traces_dir() / f).is_file() for f in KNOWN_TRACES.values())
needs_traces = pytest.mark.skipif(not HAVE_TRACES, reason=f"shared traces not found at {traces_dir()}")


def write_azure(path, rows):
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{t},{i},{o}" for t, i, o in rows]
    path.write_text("\n".join(lines) + "\n")


def test_azure_csv_times_relative_to_first(tmp_path):
    path = tmp_path / "t.csv"
    write_azure(
        path,
        [
            ("2023-11-16 18:17:03.9799600", 100, 10),
            ("2023-11-16 18:17:04.0319600", 200, 20),
            ("2023-11-16 18:18:03", 300, 30),
        ],
    )
    t = load_trace(str(path))
    assert t.name == "t" and t.hash_ids is None
    np.testing.assert_allclose(t.arrival_s, [0.0, 0.052, 59.02004], atol=1e-6)
    assert t.input_len.tolist() == [100, 200, 300]
    assert t.output_len.tolist() == [10, 20, 30]


def test_mooncake_jsonl_ms_and_hash_ids(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 1500, "input_length": 600, "output_length": 7, "hash_ids": [0, 2]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = load_trace(str(path))
    assert t.arrival_s.tolist() == [0.0, 1.5]
    assert t.hash_ids == [(0, 1), (0, 2)]
    assert t.block_tokens == 512


def test_trace_file_override_keeps_the_name(tmp_path):
    path = tmp_path / "copy.csv"
    write_azure(path, [("2023-11-16 18:17:03", 1, 1)])
    name, resolved = resolve_trace("azure-code", str(path))
    assert (name, resolved) == ("azure-code", path)


def test_env_var_moves_the_traces_dir(tmp_path, monkeypatch):
    write_azure(tmp_path / KNOWN_TRACES["azure-conv"], [("2023-11-16 18:17:03", 5, 6)])
    monkeypatch.setenv("BANASERVE_TRACES", str(tmp_path))
    t = load_trace("azure-conv")
    assert t.input_len.tolist() == [5]


def test_bad_traces(tmp_path, monkeypatch):
    with pytest.raises(BenchError, match="unknown trace"):
        resolve_trace("azure-cod")
    with pytest.raises(BenchError, match="not found"):
        resolve_trace(str(tmp_path / "missing.csv"))
    monkeypatch.setenv("BANASERVE_TRACES", str(tmp_path))
    with pytest.raises(BenchError, match="BANASERVE_TRACES"):
        resolve_trace("mooncake-conv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(BenchError, match="not an Azure CSV"):
        load_trace(str(bad))


@needs_traces
def test_shared_traces_load():
    code, conv, moon = (load_trace(name) for name in ("azure-code", "azure-conv", "mooncake-conv"))
    assert (len(code), len(conv), len(moon)) == (8819, 19366, 12031)
    for t in (code, conv, moon):
        assert t.arrival_s[0] == 0.0 and np.all(np.diff(t.arrival_s) >= 0)
        assert t.input_len.min() >= 1 and t.output_len.min() >= 1
    # Mooncake: one hash id per started 512-token block
    assert all(len(h) == -(-n // 512) for h, n in zip(moon.hash_ids, moon.input_len.tolist(), strict=True))
    assert moon.arrival_s[-1] == pytest.approx(3536.999)
