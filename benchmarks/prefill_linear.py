"""Linear layers at prefill row counts on CPU: the native packed GEMM vs torch's F.linear (MKL), same run.

Shapes are the decoder projections (qkv, o, gate-up, down) of the small and base presets at
prefill step sizes (rows = tokens in the step). The two are timed alternately, one call each
per round, so a slow spell of the machine hits both; each gets the median of its rounds.
Prints time per call and GFLOP/s of both; the last line is the packed GEMM's speed-up (geomean).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from banaserve.models.fused_ops import SMALL_GEMM_ROWS, linear  # noqa: E402
from banaserve.models.make_model import PRESETS  # noqa: E402
from banaserve.native.build import load_library  # noqa: E402


def projections(preset: str) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each decoder projection of a preset."""
    p = PRESETS[preset]
    hidden, inter = p["hidden_size"], p["intermediate_size"]
    head_dim = hidden // p["num_attention_heads"]
    qkv = (p["num_attention_heads"] + 2 * p["num_key_value_heads"]) * head_dim
    return {"qkv": (hidden, qkv), "o": (hidden, hidden), "gate_up": (hidden, 2 * inter), "down": (inter, hidden)}


def alternate_ms(a, b, rounds: int) -> tuple[float, float]:
    """Median ms per call of a and of b, called in turn."""
    ta, tb = [], []
    for _ in range(rounds):
        for fn, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", default="512,2048", help="comma-separated rows (tokens in a prefill step)")
    ap.add_argument("--presets", default="small,base")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="small preset, 2048 rows, 5 rounds")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.presets, args.rounds = "2048", "small", 5
    if load_library() is None:
        sys.exit("the native kernels are unavailable here (no C compiler, or BANASERVE_CPU_KERNEL=0)")
    ratios = []
    for preset in args.presets.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            if rows <= SMALL_GEMM_ROWS[1]:
                sys.exit(f"{rows} rows go to the small-M kernel (benchmarks/decode_linear.py), not the packed GEMM")
            for name, (k, n) in projections(preset).items():
                x, w = torch.randn(rows, k), torch.randn(n, k) * k ** -0.5
                err = (linear(x, w) - F.linear(x, w)).abs().max().item()
                t_native, t_mkl = alternate_ms(lambda x=x, w=w: linear(x, w), lambda x=x, w=w: F.linear(x, w),
                                                 args.rounds)
                gflop = 2 * rows * k * n / 1e9
                print(f"{preset:5s} {rows:5d} rows {name:8s}: packed {t_native:.2f} ms "
                      f"({gflop / t_native * 1e3:.0f} GFLOP/s), F.linear {t_mkl:.2f} ms "
                      f"({gflop / t_mkl * 1e3:.0f} GFLOP/s), {t_mkl / t_native:.2f}x, max |diff| {err:.1e}")
                ratios.append(t_mkl / t_native)
    print(f"torch threads {torch.get_num_threads()}")
    print(f"prefill linear speed-up, native packed GEMM / F.linear (geomean): {statistics.geometric_mean(ratios):.2f}x")


if __name__ == "__main__":
    main()
