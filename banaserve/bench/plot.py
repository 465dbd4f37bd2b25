"""Figures from result files: latency CDFs, SLO attainment vs rate, throughput and queue timelines."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from banaserve.bench.metrics import e2e_s, tpot_s, ttft_s  # noqa: E402
from banaserve.bench.results import Result  # noqa: E402


def run_name(result: Result) -> str:
    """Legend entry: the run's label, plus its rate when it has one."""
    label = result.meta.get("label") or Path(result.path).stem
    rate = result.meta.get("rate")
    return f"{label} @ {rate:g} req/s" if rate else label


def offered_rate(result: Result) -> float | None:
    """The rate the run offered: --rate, else the recorded schedule's rate."""
    rate = result.meta.get("rate")
    if rate:
        return float(rate)
    return (result.meta.get("rate_check") or {}).get("scheduled_rate")


def _cdf(ax, values_s: list[float], name: str, color: str) -> None:
    if not values_s:
        return
    ms = np.sort(np.asarray(values_s)) * 1000.0
    ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=name, color=color)


def _sort_key(result: Result) -> tuple[str, float]:
    return (str(result.meta.get("label") or ""), offered_rate(result) or 0.0)


def timeline(
    result: Result, min_bin_s: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bin starts s, output tokens/s, requests in flight, requests waiting for a slot) over the run.

    At most 100 bins, none shorter than `min_bin_s`: shorter bins turn bursty token arrivals
    into spikes rather than a rate.
    """
    recs = result.records
    ends = [r.end_s for r in recs if r.end_s is not None]
    span = max(ends, default=0.0) or 1.0
    bins = max(1, min(100, int(span / min_bin_s)))
    edges = np.linspace(0.0, span, bins + 1)
    width = edges[1] - edges[0]
    times, weights = [], []
    for r in recs:
        if r.token_times_s:
            # usage can count more tokens than chunks (servers may send several per chunk)
            per_chunk = max(r.output_tokens, len(r.token_times_s)) / len(r.token_times_s)
            times += r.token_times_s
            weights += [per_chunk] * len(r.token_times_s)
    tokens, _ = np.histogram(times, bins=edges, weights=weights)
    mid = edges[:-1] + width / 2
    send = np.array([r.send_s if r.send_s is not None else np.inf for r in recs])
    end = np.array([r.end_s if r.end_s is not None else np.inf for r in recs])
    arrive = np.array([r.arrival_s for r in recs])
    in_flight = ((send[None, :] <= mid[:, None]) & (mid[:, None] < end[None, :])).sum(axis=1)
    waiting = ((arrive[None, :] <= mid[:, None]) & (mid[:, None] < send[None, :])).sum(axis=1)
    return edges[:-1], tokens / width, in_flight, waiting


def plot_results(results: list[Result], out: str | Path) -> None:
    """Write a 2x3 figure: TTFT/TPOT/E2E CDFs, attainment vs rate, token throughput, queue length."""
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    (ax_ttft, ax_tpot, ax_e2e), (ax_slo, ax_tput, ax_queue) = axes
    results = sorted(results, key=_sort_key)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, res in enumerate(results):
        color = colors[i % len(colors)]
        done = [r for r in res.records if r.ok]
        name = run_name(res)
        for ax, fn in ((ax_ttft, ttft_s), (ax_tpot, tpot_s), (ax_e2e, e2e_s)):
            _cdf(ax, [v for v in map(fn, done) if v is not None], name, color)
        t, tput, in_flight, waiting = timeline(res)
        ax_tput.plot(t, tput, label=name, color=color)
        ax_queue.plot(t, in_flight, label=f"{name} in flight", color=color)
        if res.meta.get("max_concurrency"):  # only then do requests wait in the client for a slot
            ax_queue.plot(t, waiting, linestyle="--", label=f"{name} waiting for a slot", color=color)
    for ax, title in ((ax_ttft, "TTFT"), (ax_tpot, "TPOT"), (ax_e2e, "E2E latency")):
        ax.set(title=f"{title} CDF (completed requests)", xlabel="ms", ylabel="fraction of requests")
        lo, hi = ax.dataLim.intervalx
        if ax.has_data() and lo > 0 and hi / lo > 20:  # log only when the spread needs it
            ax.set_xscale("log")
    # one line per system/mode: runs sharing a label form a curve over their rates
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for res in results:
        rate = offered_rate(res)
        if rate is not None:
            label = res.meta.get("label") or Path(res.path).stem
            curves[label].append((rate, 100.0 * res.summary["slo_attainment"]))
    for label, pts in curves.items():
        pts.sort()
        ax_slo.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax_slo.axhline(90.0, color="grey", linestyle=":", linewidth=1)
    ax_slo.set(
        title="SLO attainment vs rate", xlabel="offered rate (req/s)", ylabel="attainment (%)", ylim=(0, 102)
    )
    ax_tput.set(title="output throughput", xlabel="time (s)", ylabel="tokens/s")
    ax_queue.set(title="client-side queue", xlabel="time (s)", ylabel="requests")
    for ax in axes.flat:
        if ax.has_data():
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
