"""Decode attention on CPU: the native paged kernel vs the plain PyTorch path, same inputs, same run.

A batch of single-token queries attends over contexts scattered in random KV blocks, with the
small preset's shapes (6 query heads, 2 KV heads, head_dim 64, 16-token blocks). Each timed call
follows a matmul, as inside the engine, so torch's OpenMP workers are awake (they spin after
every op) when the kernel starts. The PyTorch path is the engine's fallback: gather each group's
blocks into a workspace, then masked SDPA. Prints time per call and the KV read rate of both;
the last line is the kernel's speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from banaserve.kv.cpu_kernel import kernel_supports, paged_decode_attention  # noqa: E402
from banaserve.kv.paged_attention import AttentionMetadata, DecodeGroup, paged_attention  # noqa: E402


def make_case(batch: int, ctx: int, seed: int, heads: int = 6, kv_heads: int = 2, head_dim: int = 64,
              block_size: int = 16):
    g = torch.Generator().manual_seed(seed)
    width = -(-ctx // block_size)
    num_blocks = batch * width * 2  # half the pool unused, so the blocks a batch reads are scattered
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=g)
    tables = torch.randperm(num_blocks, generator=g)[:batch * width].view(batch, width)
    lens = torch.full((batch,), ctx, dtype=torch.int64)
    q = torch.randn(batch, heads, head_dim, generator=g)
    return q, cache, tables, lens


def pytorch_path(q, cache, tables, lens, workspace):
    bs = cache.shape[2]
    mask = (torch.arange(tables.shape[1] * bs)[None, :] < lens[:, None])[:, None, None, :]
    meta = AttentionMetadata(slot_mapping=torch.empty(0, dtype=torch.int64),
                             decodes=[DecodeGroup(0, tables, lens, mask)], workspace=workspace)
    empty = torch.empty(0, cache.shape[3], cache.shape[4])
    return paged_attention(q, empty, empty, cache, meta)


def median_ms(fn, reps: int, busy: torch.Tensor) -> float:
    times = []
    for _ in range(reps):
        busy @ busy  # wakes torch's OpenMP workers, like the projections before attention in a layer
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure(batch: int, ctx: int, seed: int, reps: int, busy: torch.Tensor) -> float:
    """Print both paths' time for one context length; return the kernel's speed-up."""
    q, cache, tables, lens = make_case(batch, ctx, seed)
    if not kernel_supports(cache):
        sys.exit("the native kernel is unavailable here (no C compiler, or BANASERVE_CPU_KERNEL=0)")
    ws = torch.empty(2 * tables.numel(), *cache.shape[2:])
    ref = pytorch_path(q, cache, tables, lens, ws)
    err = (paged_decode_attention(q, cache, tables, lens) - ref).abs().max().item()
    t_torch = median_ms(lambda: pytorch_path(q, cache, tables, lens, ws), reps, busy)
    t_kernel = median_ms(lambda: paged_decode_attention(q, cache, tables, lens, False), reps, busy)
    gb = batch * ctx * 2 * cache.shape[3] * cache.shape[4] * cache.element_size() / 1e9
    print(f"batch {batch} ctx {ctx}: kernel {t_kernel:.2f} ms ({gb / t_kernel * 1e3:.1f} GB/s of KV), "
          f"pytorch {t_torch:.2f} ms ({gb / t_torch * 1e3:.1f} GB/s), {t_torch / t_kernel:.2f}x, max |diff| {err:.1e}")
    return t_torch / t_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--contexts", default="200,800,1280", help="comma-separated context lengths")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="batch 64, contexts 200 and 800, 10 reps")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.contexts, args.reps = 64, "200,800", 10
    busy = torch.randn(256, 256)
    ratios = []
    for ctx in (int(c) for c in args.contexts.split(",")):
        ratios.append(measure(args.batch, ctx, args.seed, args.reps, busy))
    print(f"torch threads {torch.get_num_threads()}")
    print(f"decode attention speed-up, native kernel / pytorch path (geomean): "
          f"{statistics.geometric_mean(ratios):.2f}x")


if __name__ == "__main__":
    main()
