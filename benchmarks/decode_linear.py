"""Linear layers at decode batch sizes on CPU: the native small-M GEMM vs torch's F.linear (MKL), same run.

Shapes are the small preset's decoder (qkv, o, gate-up, down projections and the LM head) at a
few decode batch sizes. Each timed call follows another matmul, as in a layer, and by default
takes the next of enough weight copies to overflow the last-level cache: in the engine a decode
step's KV stream evicts the weights, so they come from DRAM (`--hot-weights` reuses one copy).
Prints time per call and GFLOP/s of both; the last line is the native kernel's speed-up (geomean).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from decode_attention import median_ms  # noqa: E402

from banaserve.models.fused_ops import SMALL_GEMM_ROWS, linear  # noqa: E402
from banaserve.native.build import load_library  # noqa: E402

COLD_BYTES = 64 << 20  # weight copies per shape add up to more than a 32 MiB L3
SHAPES = {"qkv": (384, 640), "o": (384, 384), "gate_up": (384, 2048), "down": (1024, 384), "lm_head": (384, 8192)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="8,48,128", help="comma-separated rows (decode batch sizes)")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="batches 8 and 48, 10 reps")
    ap.add_argument("--hot-weights", action="store_true", help="one weight copy per shape, cache-resident")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.reps = "8,48", 10
    if load_library() is None:
        sys.exit("the native kernels are unavailable here (no C compiler, or BANASERVE_CPU_KERNEL=0)")
    busy = torch.randn(256, 256)
    ratios = []
    for rows in (int(b) for b in args.batches.split(",")):
        if not SMALL_GEMM_ROWS[0] <= rows <= SMALL_GEMM_ROWS[1]:
            sys.exit(f"batch {rows} is outside the rows the native kernel takes, {SMALL_GEMM_ROWS}")
        for name, (k, n) in SHAPES.items():
            copies = 1 if args.hot_weights else max(2, COLD_BYTES // (4 * n * k))
            x, ws = torch.randn(rows, k), [torch.randn(n, k) * k ** -0.5 for _ in range(copies)]
            err = (linear(x, ws[0]) - F.linear(x, ws[0])).abs().max().item()
            mkl_w, native_w = itertools.cycle(ws), itertools.cycle(ws)
            t_mkl = median_ms(lambda x=x, it=mkl_w: F.linear(x, next(it)), args.reps, busy)
            t_native = median_ms(lambda x=x, it=native_w: linear(x, next(it)), args.reps, busy)
            gflop = 2 * rows * k * n / 1e9
            print(f"batch {rows:3d} {name:8s}: native {t_native:.3f} ms ({gflop / t_native * 1e3:.0f} GFLOP/s), "
                  f"F.linear {t_mkl:.3f} ms ({gflop / t_mkl * 1e3:.0f} GFLOP/s), {t_mkl / t_native:.2f}x, "
                  f"max |diff| {err:.1e}")
            ratios.append(t_mkl / t_native)
    print(f"torch threads {torch.get_num_threads()}")
    print(f"decode linear speed-up, native small-M GEMM / F.linear (geomean): {statistics.geometric_mean(ratios):.2f}x")


if __name__ == "__main__":
    main()
