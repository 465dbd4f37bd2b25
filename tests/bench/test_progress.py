"""The progress line."""

from __future__ import annotations

import io

from banaserve.bench.progress import Progress
from banaserve.bench.results import FAILED, RequestRecord


def test_line_counts_rate_and_p99():
    p = Progress(total=10, stream=io.StringIO(), window_s=5.0)
    p.t0 = 100.0
    for i in range(4):
        r = RequestRecord(i, 0.0, 1, 1, send_s=0.0, first_token_s=0.01 * (i + 1), end_s=0.1)
        p.done(r)
    p.done(RequestRecord(9, 0.0, 1, 1, status=FAILED, error="x"))
    p.done_times = [101.0, 102.0, 103.0, 104.0, 104.5]  # completion clock times
    line = p.line(now=105.0)
    assert "5/10 done (1 failed)" in line
    assert "1.0 req/s" in line  # 5 completions in the last 5 s
    assert "p99 TTFT 40 ms" in line  # of 10, 20, 30, 40 ms
    assert line.startswith("[" + "#" * 12 + "-" * 12 + "]")
