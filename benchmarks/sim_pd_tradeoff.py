"""The prefill/decode disaggregation trade-off, simulated: colocated vs disagg at equal GPU count.

azure-code prompts (long) and outputs (short), Poisson arrivals at increasing rates, llama3-8b on
H100. Colocated instances batch prefill chunks with decodes (chunked prefill), so decodes slow down
whenever a prompt is in the step; disaggregated instances keep decode steps short but give prefill
fewer GPUs. SLO attainment (TTFT and TPOT both met) against rate shows where each wins, under a
tight SLO (TTFT 250 ms, TPOT 15 ms: about 5x a 2k-token prefill and 3x a decode step) and under
the bench default for azure-code (TTFT 1 s, TPOT 50 ms). Each point is simulated once; both
SLOs are scored on the same records.

    python benchmarks/sim_pd_tradeoff.py            # the figure and table in docs/
    python benchmarks/sim_pd_tradeoff.py --quick    # fewer requests and rates

The last line printed is the headline: serving capacity (rate at 90% attainment) of each setup.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banaserve.bench.metrics import SLO, meets_slo  # noqa: E402
from banaserve.bench.results import read_result  # noqa: E402
from banaserve.bench.sweep import capacity  # noqa: E402
from banaserve.sim import cli  # noqa: E402

SLOS = {"tight": SLO(ttft_ms=250.0, tpot_ms=15.0), "default": SLO(ttft_ms=1000.0, tpot_ms=50.0)}
SETUPS = {  # label -> simulate options; 4 GPUs each
    "colocated 4": ["--mode", "colocated", "--instances", "4"],
    "disagg 2P+2D": ["--mode", "disagg", "--prefill", "2", "--decode", "2"],
    "disagg 3P+1D": ["--mode", "disagg", "--prefill", "3", "--decode", "1"],
}


def simulate(label: str, opts: list[str], rate: float, a: argparse.Namespace, out: Path) -> dict:
    """One simulated point: its summary plus the attainment under each of SLOS."""
    path = out / f"{label.replace(' ', '_').replace('+', '')}-rate-{rate:g}.json"
    argv = ["--trace", "azure-code", "--rate", str(rate), "--num-requests", str(a.num_requests),
            "--model-config", a.model, "--hardware", a.hardware, "--link-gbps", str(a.link_gbps),
            "--seed", str(a.seed), "--label", label, "--out", str(path), *opts]
    with contextlib.redirect_stdout(io.StringIO()):
        if cli.main(argv) != 0:
            raise SystemExit(f"simulate failed: {' '.join(argv)}")
    res = read_result(path)
    point = dict(res.summary)
    for name, slo in SLOS.items():
        point[f"attain_{name}"] = sum(meets_slo(r, slo) for r in res.records) / len(res.records)
    return point


def plot(results: dict[str, list[tuple[float, dict]]], path: Path, a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.6))
    for label, points in results.items():
        rates = [r for r, _ in points]
        for ax, name in zip(axes[:2], SLOS, strict=True):
            ax.plot(rates, [100 * s[f"attain_{name}"] for _, s in points], marker="o", label=label)
        axes[2].plot(rates, [s["ttft_ms"]["p90"] for _, s in points], marker="o", label=label)
        axes[3].plot(rates, [s["tpot_ms"]["p90"] for _, s in points], marker="o", label=label)
    for ax, (name, slo) in zip(axes[:2], SLOS.items(), strict=True):
        ax.axhline(90, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"SLO attainment, {name} (TTFT <= {slo.ttft_ms:g} ms, TPOT <= {slo.tpot_ms:g} ms)",
               xlabel="rate (req/s)", ylabel="%", ylim=(0, 102))
    axes[2].set(title="P90 TTFT", xlabel="rate (req/s)", ylabel="ms", yscale="log")
    axes[3].set(title="P90 TPOT", xlabel="rate (req/s)", ylabel="ms")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"simulated azure-code, {a.model} on 4 x {a.hardware}, {a.num_requests} requests per point")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--hardware", default="h100")
    p.add_argument("--rates", default="8,16,24,32,40,48,56,64,80,96")
    p.add_argument("--num-requests", type=int, default=2000)
    p.add_argument("--link-gbps", type=float, default=200.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="results/pd_tradeoff", help="per-point result JSONs")
    p.add_argument("--figure", default=str(ROOT / "docs" / "sim_pd_tradeoff.png"))
    p.add_argument("--quick", action="store_true", help="400 requests per point, every other rate")
    a = p.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    if a.quick:
        a.num_requests = min(a.num_requests, 400)
        rates = rates[1::2]
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, list[tuple[float, dict]]] = {}
    print(f"{'setup':<14} {'rate':>6} {'tight%':>7} {'default%':>9} {'p90 TTFT ms':>12} {'p90 TPOT ms':>12}")
    for label, opts in SETUPS.items():
        results[label] = []
        for rate in rates:
            s = simulate(label, opts, rate, a, out)
            results[label].append((rate, s))
            print(f"{label:<14} {rate:>6g} {100 * s['attain_tight']:>7.1f} {100 * s['attain_default']:>9.1f} "
                  f"{s['ttft_ms']['p90']:>12.1f} {s['tpot_ms']['p90']:>12.2f}", flush=True)
    plot(results, Path(a.figure), a)
    print(f"wrote {a.figure} and {sum(map(len, results.values()))} results in {out} "
          f"({time.perf_counter() - start:.0f} s)")
    caps = []
    for name in SLOS:
        parts = []
        for label, points in results.items():
            cap = capacity([r for r, _ in points], [s[f"attain_{name}"] for _, s in points])
            parts.append(f"{label} {'<' + format(rates[0], 'g') if cap is None else format(cap, '.1f')}")
        caps.append(f"{name} SLO: " + ", ".join(parts))
    print("capacity at 90% attainment (req/s): " + "; ".join(caps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
