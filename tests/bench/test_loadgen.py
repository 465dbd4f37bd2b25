"""The load generator against the local test server (a separate process): timing accuracy, rate
holding, failures. The timing checks compare measurements with the server's known pace (and with
the write times the server logs), with the tolerances the issue states: 5 ms and 2%."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from banaserve.bench.client import ClientConfig
from banaserve.bench.loadgen import run_load
from banaserve.bench.metrics import SLO, itls_s, summarize, ttft_s
from banaserve.bench.prompts import PromptBuilder, PromptConfig
from banaserve.bench.spec import BenchError
from banaserve.bench.workload import WorkloadConfig, build_specs


def run(url, trace, prompt=None, max_concurrency=None, **kw):
    client_kw = {k: kw.pop(k) for k in ("timeout_s", "api_key", "model", "prompt_text") if k in kw}
    specs = build_specs(WorkloadConfig(trace=trace, **kw))
    client = ClientConfig(endpoint=url, **client_kw)
    prompt = prompt or PromptConfig()
    return specs, asyncio.run(run_load(specs, client, prompt, max_concurrency, kw.get("rate")))


def peak_in_flight(records) -> int:
    return max(sum(r.send_s <= q.send_s < r.end_s for r in records) for q in records)


def stats(x) -> str:
    p90, p99 = np.percentile(x, [90, 99])
    return f"mean {np.mean(x):.2f} median {np.median(x):.2f} p90 {p90:.2f} p99 {p99:.2f}"


def test_timing_accuracy_at_50_concurrent_streams(server_factory, tmp_path):
    """Measured TTFT and ITL vs the truth, at ~51 concurrent streams.

    The server aims at a known pace (TTFT 50 ms, ITL 20 ms) and logs when it really wrote each
    token (perf_counter is CLOCK_MONOTONIC, shared by local processes). On a shared 2-core host
    the server itself drifts from its pace by a few ms, so the truth for each request is: its
    first token's write time minus the client's send time (TTFT), and the gaps between the
    server's writes (ITL).
    """
    ttft_ms, itl_ms = 50.0, 20.0
    # A stall of the whole host (another job on this 2-core machine) delays the client's reads
    # and skews a mean by tens of ms without being the tool's error; one more attempt tells a
    # passing stall from a real inaccuracy, which would fail both.
    failures = []
    for attempt in range(2):
        log = tmp_path / f"server-{attempt}.jsonl"
        server = server_factory("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), log=log)
        failures = timing_errors(server.url, log, ttft_ms, itl_ms)
        if not failures:
            return
        print(f"attempt {attempt}: {failures}")
    raise AssertionError(failures)


def timing_errors(url, log, ttft_ms: float, itl_ms: float) -> list[str]:
    """Run ~51 concurrent streams against the paced server; return the checks that failed."""
    # evenly spaced arrivals at 50 req/s, each stream lasting 50 + 49 * 20 ms: ~51 streams in flight
    trace = "synthetic:input=fixed:64,output=fixed:50"
    specs, out = run(url, trace, rate=50.0, burstiness=0.0, num_requests=250)
    recs = out.records
    assert all(r.ok for r in recs), {r.error for r in recs}
    assert peak_in_flight(recs) >= 50
    builder = PromptBuilder(PromptConfig())
    index = {tuple(builder.token_ids(s)[:8].tolist()): s.index for s in specs}
    writes = {
        index[tuple(e["prompt_head"])]: np.array(e["token_writes"]) for e in map(json.loads, log.open())
    }
    ttft = np.array([ttft_s(r) for r in recs]) * 1000
    true_ttft = np.array([writes[r.index][0] - (out.t0_perf + r.send_s) for r in recs]) * 1000
    itl = np.array([gap for r in recs for gap in itls_s(r)]) * 1000
    true_itl = np.concatenate([np.diff(writes[r.index]) for r in recs]) * 1000
    print(f"\nTTFT ms {stats(ttft)} | truth {stats(true_ttft)} | nominal {ttft_ms}")
    print(f"ITL ms {stats(itl)} | truth {stats(true_itl)} | nominal {itl_ms}")
    print(
        f"per-request TTFT error ms {stats(ttft - true_ttft)}; per-gap ITL error ms {stats(itl - true_itl)}"
    )
    checks = {
        "mean TTFT": abs(ttft.mean() - true_ttft.mean()),
        "median TTFT": abs(np.median(ttft) - np.median(true_ttft)),
        "mean ITL": abs(itl.mean() - true_itl.mean()),
        "median ITL": abs(np.median(itl) - np.median(true_itl)),
        "median per-request TTFT error": np.median(np.abs(ttft - true_ttft)),
        "median per-gap ITL error": np.median(np.abs(itl - true_itl)),
        # the pace the server aimed at is what the tool reports, give or take the server's drift
        "median ITL vs nominal": abs(np.median(itl) - itl_ms),
    }
    return [f"{name} off by {err:.2f} ms > 5 ms" for name, err in checks.items() if err > 5.0]


def test_holds_200_requests_per_second_over_2000_requests(server_factory):
    server = server_factory("--ttft-ms", "1", "--itl-ms", "1")
    _, out = run(server.url, "synthetic:input=fixed:16,output=fixed:2", rate=200.0, num_requests=2000)
    rc = out.rate_check
    print(
        f"\nrequested {rc.requested_rate} achieved {rc.achieved_rate:.3f} req/s, "
        f"lag p99 {rc.lag_p99_ms:.2f} ms"
    )
    assert all(r.ok for r in out.records)
    assert rc.requested_rate == 200.0
    assert rc.scheduled_rate == pytest.approx(200.0)
    assert abs(rc.achieved_rate - 200.0) / 200.0 <= 0.02
    assert not any("achieved" in w for w in rc.warnings)


def test_reports_when_the_rate_is_not_held(server_factory):
    server = server_factory("--ttft-ms", "100", "--itl-ms", "10")
    # one slot, 110 ms per request, 50 req/s asked: the sends must fall behind
    _, out = run(
        server.url, "synthetic:input=fixed:4,output=fixed:2", max_concurrency=1, rate=50.0, num_requests=10
    )
    rc = out.rate_check
    assert not rc.ok
    assert rc.achieved_rate < 0.5 * rc.scheduled_rate
    assert any("achieved arrival rate" in w for w in rc.warnings)
    assert any("lagged" in w for w in rc.warnings)
    assert rc.lag_max_ms > 500


def test_failures_are_counted_with_reasons(server_factory):
    server = server_factory(
        "--ttft-ms",
        "5",
        "--itl-ms",
        "5",
        "--http-error-every",
        "5",
        "--drop-every",
        "7",
        "--stall-every",
        "11",
    )
    _, out = run(server.url, "synthetic:input=fixed:8,output=fixed:6", num_requests=30, timeout_s=1.0)
    # the server numbers requests 1..30 as they arrive: 500 on multiples of 5, else drop on
    # multiples of 7, else stall on multiples of 11
    s = summarize(out.records, SLO(10_000, 10_000))
    assert s.num_requests == 30 and s.failed == 6 + 4 + 2 and s.completed == 18
    kinds = {reason.split(":")[0].split(" (")[0]: n for reason, n in s.failures.items()}
    assert kinds == {"HTTP 500": 6, "stream dropped": 4, "timeout after 1s": 2}
    assert s.slo_met == 18 and s.slo_attainment == pytest.approx(18 / 30)
    dropped = [r for r in out.records if r.error.startswith("stream dropped")]
    assert all(len(r.token_times_s) == 3 and r.end_s is not None for r in dropped)  # partial data kept


def test_counts_streamed_chunks_when_no_usage(server_factory):
    server = server_factory("--ttft-ms", "2", "--itl-ms", "2", "--no-usage")
    _, out = run(server.url, "synthetic:input=fixed:8,output=fixed:5", num_requests=5)
    assert [(r.ok, r.output_tokens, r.prompt_tokens) for r in out.records] == [(True, 5, None)] * 5


def test_model_discovery_api_key_and_text_prompts(server_factory):
    server = server_factory("--ttft-ms", "2", "--itl-ms", "2", "--api-key", "sekrit", "--model", "m-7")
    trace = "synthetic:input=fixed:12,output=fixed:3"
    _, out = run(server.url, trace, num_requests=3, api_key="sekrit", prompt_text=True)
    assert out.model == "m-7"
    assert [(r.ok, r.prompt_tokens) for r in out.records] == [(True, 12)] * 3  # one word per token
    with pytest.raises(BenchError, match="HTTP 401"):
        run(server.url, trace, num_requests=3)
    _, out = run(server.url + "/v1", trace, num_requests=3, model="m-7")  # no key: every request fails
    assert {r.error for r in out.records} == {'HTTP 401: {"error":{"message":"bad api key","type":"test"}}'}


def test_unreachable_endpoint_is_a_clean_error():
    with pytest.raises(BenchError, match="cannot list models"):
        run("http://127.0.0.1:9", "synthetic:input=fixed:1,output=fixed:1", num_requests=1)
