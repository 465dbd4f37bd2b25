"""The result JSON round trip."""

from __future__ import annotations

import json

import pytest

from banaserve.bench.metrics import SLO, summarize
from banaserve.bench.results import FAILED, SCHEMA, RequestRecord, read_result, write_result
from banaserve.bench.spec import BenchError


def test_round_trip(tmp_path):
    records = [
        RequestRecord(0, 0.0, 16, 4, 0.0001, 0.0201234567, 0.05, [0.0201234567, 0.03, 0.04, 0.05], 4, 16),
        RequestRecord(1, 0.5, 16, 4, 0.5002, None, 0.6, [], 0, None, FAILED, "HTTP 503: busy"),
    ]
    summary = summarize(records, SLO(100.0, 50.0))
    path = tmp_path / "sub" / "r.json"
    write_result(path, records, summary, {"label": "x", "rate": 2.0})
    doc = json.loads(path.read_text())  # plain JSON for any tool
    assert doc["schema"] == SCHEMA
    assert doc["summary"]["failures"] == {"HTTP 503: busy": 1}
    assert doc["summary"]["ttft_ms"]["count"] == 1
    assert doc["summary"]["slo"] == {"ttft_ms": 100.0, "tpot_ms": 50.0}
    back = read_result(path)
    assert back.meta == {"label": "x", "rate": 2.0}
    assert back.records[1] == records[1]
    assert back.records[0].token_times_s[0] == 0.020123  # rounded to microseconds
    assert back.summary["completed"] == 1


def test_bad_result_files(tmp_path):
    with pytest.raises(BenchError, match="not found"):
        read_result(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(BenchError, match="not JSON"):
        read_result(bad)
    bad.write_text('{"schema": "other"}')
    with pytest.raises(BenchError, match="not a banaserve bench result"):
        read_result(bad)
