"""The prefill/decode disaggregation trade-off, simulated: colocated vs disagg at equal GPU count.

azure-code prompts (long) and outputs (short), Poisson arrivals at increasing rates, llama3-8b on
H100. Colocated instances batch prefill chunks with decodes (chunked prefill), so decodes slow down
whenever a prompt is in the step; disaggregated instances keep decode steps short but give prefill
fewer GPUs. SLO attainment (TTFT and TPOT both met) against rate shows where each wins.

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

from banaserve.bench.results import read_result  # noqa: E402
from banaserve.bench.sweep import capacity  # noqa: E402
from banaserve.sim import cli  # noqa: E402

SETUPS = {  # label -> simulate options; 4 GPUs each
    "colocated 4": ["--mode", "colocated", "--instances", "4"],
    "disagg 2P+2D": ["--mode", "disagg", "--prefill", "2", "--decode", "2"],
    "disagg 3P+1D": ["--mode", "disagg", "--prefill", "3", "--decode", "1"],
}


def simulate(label: str, opts: list[str], rate: float, a: argparse.Namespace, out: Path) -> dict:
    path = out / f"{label.replace(' ', '_').replace('+', '')}-rate-{rate:g}.json"
    argv = ["--trace", "azure-code", "--rate", str(rate), "--num-requests", str(a.num_requests),
            "--model-config", a.model, "--hardware", a.hardware, "--slo-ttft", str(a.slo_ttft),
            "--slo-tpot", str(a.slo_tpot), "--link-gbps", str(a.link_gbps), "--seed", str(a.seed),
            "--label", label, "--out", str(path), *opts]
    with contextlib.redirect_stdout(io.StringIO()):
        if cli.main(argv) != 0:
            raise SystemExit(f"simulate failed: {' '.join(argv)}")
    return read_result(path).summary


def plot(results: dict[str, list[tuple[float, dict]]], path: Path, a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_slo, ax_ttft, ax_tpot) = plt.subplots(1, 3, figsize=(16, 4.6))
    for label, points in results.items():
        rates = [r for r, _ in points]
        ax_slo.plot(rates, [100 * s["slo_attainment"] for _, s in points], marker="o", label=label)
        ax_ttft.plot(rates, [s["ttft_ms"]["p90"] for _, s in points], marker="o", label=label)
        ax_tpot.plot(rates, [s["tpot_ms"]["p90"] for _, s in points], marker="o", label=label)
    ax_slo.axhline(90, color="grey", linestyle=":", linewidth=1)
    ax_slo.set(title=f"SLO attainment (TTFT <= {a.slo_ttft:g} ms, TPOT <= {a.slo_tpot:g} ms)",
               xlabel="rate (req/s)", ylabel="%", ylim=(0, 102))
    ax_ttft.axhline(a.slo_ttft, color="grey", linestyle=":", linewidth=1)
    ax_ttft.set(title="P90 TTFT", xlabel="rate (req/s)", ylabel="ms", yscale="log")
    ax_tpot.axhline(a.slo_tpot, color="grey", linestyle=":", linewidth=1)
    ax_tpot.set(title="P90 TPOT", xlabel="rate (req/s)", ylabel="ms")
    for ax in (ax_slo, ax_ttft, ax_tpot):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"simulated azure-code, {a.model} on 4 x {a.hardware}, {a.num_requests} requests per point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--hardware", default="h100")
    p.add_argument("--rates", default="4,8,12,16,20,24,28,32,40,48")
    p.add_argument("--num-requests", type=int, default=2000)
    p.add_argument("--slo-ttft", type=float, default=200.0)
    p.add_argument("--slo-tpot", type=float, default=20.0)
    p.add_argument("--link-gbps", type=float, default=200.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="results/pd_tradeoff", help="per-point result JSONs")
    p.add_argument("--figure", default=str(ROOT / "docs" / "sim_pd_tradeoff.png"))
    p.add_argument("--quick", action="store_true", help="400 requests per point, 5 rates")
    a = p.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    if a.quick:
        a.num_requests = min(a.num_requests, 400)
        rates = rates[1::2]
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, list[tuple[float, dict]]] = {}
    print(f"{'setup':<14} {'rate':>6} {'attain%':>8} {'p90 TTFT ms':>12} {'p90 TPOT ms':>12} {'goodput':>8}")
    for label, opts in SETUPS.items():
        results[label] = []
        for rate in rates:
            s = simulate(label, opts, rate, a, out)
            results[label].append((rate, s))
            print(f"{label:<14} {rate:>6g} {100 * s['slo_attainment']:>8.1f} {s['ttft_ms']['p90']:>12.1f} "
                  f"{s['tpot_ms']['p90']:>12.2f} {s['goodput']:>8.2f}", flush=True)
    plot(results, Path(a.figure), a)
    print(f"wrote {a.figure} and {sum(map(len, results.values()))} results in {out} "
          f"({time.perf_counter() - start:.0f} s)")
    caps = []
    for label, points in results.items():
        cap = capacity([r for r, _ in points], [s["slo_attainment"] for _, s in points])
        caps.append(f"{label} {'<' + format(rates[0], 'g') if cap is None else format(cap, '.1f')}")
    print("capacity at 90% SLO attainment (req/s): " + ", ".join(caps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
