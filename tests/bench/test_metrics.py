"""Metric math against values computed by hand (percentiles: linear interpolation between ranks)."""

from __future__ import annotations

import pytest

from banaserve.bench.metrics import SLO, meets_slo, stats_ms, summarize, tpot_s
from banaserve.bench.results import FAILED, RequestRecord


def rec(index, send, tokens, end, output_tokens=None, status="ok", error="", arrival=None) -> RequestRecord:
    return RequestRecord(
        index=index,
        arrival_s=send if arrival is None else arrival,
        input_len=10,
        output_len=8,
        send_s=send,
        first_token_s=tokens[0] if tokens else None,
        end_s=end,
        token_times_s=list(tokens),
        output_tokens=len(tokens) if output_tokens is None else output_tokens,
        status=status,
        error=error,
    )


def records() -> list[RequestRecord]:
    return [
        rec(0, 0.0, [0.1, 0.3, 0.4, 0.7], 0.7),  # TTFT 100, E2E 700, TPOT 600/3=200, ITL 200,100,300
        rec(1, 1.0, [1.05], 1.05),  # 1 token: TTFT 50, E2E 50, no TPOT, no ITL
        rec(2, 0.5, [], 0.52, status=FAILED, error="HTTP 500: boom"),
        rec(3, 2.0, [2.4, 2.45, 2.5], 2.5),  # TTFT 400, E2E 500, TPOT 100/2=50, ITL 50,50
        rec(4, 3.0, [3.1, 3.2], 3.25, status=FAILED, error="stream dropped"),  # partial: excluded
        rec(5, 4.0, [4.2, 4.21, 4.5], 4.5, output_tokens=5),  # usage 5: TPOT 300/4=75, ITL 10,290
    ]


def test_latency_stats_match_hand_computation():
    s = summarize(records(), SLO())
    # TTFT ms: [100, 50, 400, 200] -> sorted [50, 100, 200, 400]
    assert s.ttft_ms.count == 4
    assert s.ttft_ms.mean == pytest.approx(187.5)
    assert s.ttft_ms.median == pytest.approx(150.0)
    assert s.ttft_ms.p90 == pytest.approx(200 + 0.7 * 200)  # rank 2.7
    assert s.ttft_ms.p99 == pytest.approx(200 + 0.97 * 200)  # rank 2.97
    # TPOT ms: [200, 50, 75]; the 1-token request has none
    assert s.tpot_ms.count == 3
    assert s.tpot_ms.mean == pytest.approx(325 / 3)
    assert s.tpot_ms.median == pytest.approx(75.0)
    assert s.tpot_ms.p90 == pytest.approx(75 + 0.8 * 125)  # rank 1.8
    assert s.tpot_ms.p99 == pytest.approx(75 + 0.98 * 125)
    # ITL ms, every gap of completed requests: [10, 50, 50, 100, 200, 290, 300]
    assert s.itl_ms.count == 7
    assert s.itl_ms.mean == pytest.approx(1000 / 7)
    assert s.itl_ms.median == pytest.approx(100.0)
    assert s.itl_ms.p90 == pytest.approx(290 + 0.4 * 10)  # rank 5.4
    assert s.itl_ms.p99 == pytest.approx(290 + 0.94 * 10)
    # E2E ms: [700, 50, 500, 500]
    assert s.e2e_ms.mean == pytest.approx(437.5)
    assert s.e2e_ms.median == pytest.approx(500.0)
    assert s.e2e_ms.p90 == pytest.approx(640.0)
    assert s.e2e_ms.p99 == pytest.approx(694.0)


def test_counts_and_throughput():
    s = summarize(records(), SLO())
    assert (s.num_requests, s.completed, s.failed) == (6, 4, 2)
    assert s.duration_s == pytest.approx(4.5)  # first arrival 0 to last end 4.5
    assert s.request_throughput == pytest.approx(4 / 4.5)
    assert s.total_output_tokens == 4 + 1 + 3 + 5  # usage count wins over chunk count
    assert s.output_throughput == pytest.approx(13 / 4.5)
    assert s.total_input_tokens == 40
    assert s.failures == {"HTTP 500: boom": 1, "stream dropped": 1}


def test_slo_attainment_counts_failed_as_missing():
    s = summarize(records(), SLO(ttft_ms=250, tpot_ms=100))
    # r0 misses TPOT (200), r1 meets (1 token: TPOT counts as met), r2 and r4 failed,
    # r3 misses TTFT (400), r5 meets (200 ms, 75 ms)
    assert s.slo_met == 2
    assert s.slo_attainment == pytest.approx(2 / 6)
    assert s.goodput == pytest.approx(2 / 4.5)


def test_no_slo_limits_means_every_completed_request_meets():
    s = summarize(records(), SLO(ttft_ms=None, tpot_ms=None))
    assert s.slo_met == 4
    assert s.slo_attainment == pytest.approx(4 / 6)


def test_slo_boundaries_are_inclusive():
    # binary-exact times: TTFT 125 ms, E2E 625 ms, 3 tokens -> TPOT 250 ms
    r = rec(0, 0.0, [0.125, 0.5, 0.625], 0.625)
    assert tpot_s(r) == 0.25
    assert meets_slo(r, SLO(125.0, 250.0))
    assert not meets_slo(r, SLO(124.9, 250.0))
    assert not meets_slo(r, SLO(125.0, 249.9))


def test_one_token_output_has_no_tpot_and_meets_tpot_slo():
    r = rec(0, 0.0, [0.25], 0.25)
    assert tpot_s(r) is None
    assert meets_slo(r, SLO(ttft_ms=300, tpot_ms=0.001))
    assert not meets_slo(r, SLO(ttft_ms=200, tpot_ms=0.001))


def test_uneven_gaps_tpot_uses_e2e_not_mean_itl():
    # gaps 10 ms and 490 ms, then the stream ends 100 ms after the last token
    r = rec(0, 0.0, [0.5, 0.51, 1.0], 1.1)
    assert tpot_s(r) == pytest.approx((1.1 - 0.5) / 2)
    s = summarize([r], SLO())
    assert s.itl_ms.mean == pytest.approx(250.0)
    assert s.itl_ms.median == pytest.approx(250.0)


def test_empty_and_all_failed():
    s = summarize([], SLO(1, 1))
    assert (s.num_requests, s.slo_attainment, s.goodput, s.ttft_ms.mean) == (0, 0.0, 0.0, None)
    failed = [rec(i, float(i), [], i + 0.5, status=FAILED, error="timeout after 1s") for i in range(3)]
    s = summarize(failed, SLO(1000, 1000))
    assert (s.completed, s.failed, s.slo_met) == (0, 3, 0)
    assert s.failures == {"timeout after 1s": 3}
    assert s.ttft_ms.count == 0 and s.ttft_ms.p99 is None


def test_stats_single_value():
    s = stats_ms([0.042])
    assert (s.count, s.mean, s.median, s.p90, s.p99) == (1, pytest.approx(42.0), 42.0, 42.0, 42.0)
