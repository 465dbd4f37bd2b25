"""Prefill attention on CPU: the native paged kernel vs the plain PyTorch path, same inputs, same run.

Each case is one engine step's prefill chunks, (new tokens, context) each, whose keys and values
are already in random KV blocks, with the small preset's shapes (6 query heads, 2 KV heads,
head_dim 64, 16-token blocks). The PyTorch path is the engine's fallback: one causal SDPA call per
fresh prompt, and a gather of the pages plus a masked SDPA call per chunk that follows earlier
context. Each timed call follows a matmul, as in a layer. Prints time per call and the attention
GFLOP/s of both (causal pairs only); the last line is the kernel's speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from decode_attention import median_ms  # noqa: E402

from banaserve.kv.cpu_kernel import prefill_kernel_supports  # noqa: E402
from banaserve.kv.paged_attention import AttentionMetadata, NativePrefill, PrefillChunk, paged_attention  # noqa: E402

CASES = {  # name: [(new tokens, context length)] of one step
    "fresh 256": [(256, 256)],
    "fresh 1024": [(1024, 1024)],
    "chunk 512 after 1024": [(512, 1536)],
    "mixed step": [(700, 700), (300, 300), (548, 1048), (500, 500)],
}


def make_case(chunks: list[tuple[int, int]], seed: int, heads: int = 6, kv_heads: int = 2, head_dim: int = 64,
              block_size: int = 16):
    g = torch.Generator().manual_seed(seed)
    need = [-(-ctx // block_size) for _, ctx in chunks]
    cache = torch.randn(2, sum(need) + 1, block_size, kv_heads, head_dim, generator=g)
    ids = torch.randperm(cache.shape[1], generator=g)
    spans, start, used = [], 0, 0
    for (n, ctx), nb in zip(chunks, need):
        spans.append(PrefillChunk(start, n, ctx, ids[used:used + nb].clone()))
        start, used = start + n, used + nb
    q = torch.randn(start, heads, head_dim, generator=g)
    # the step's own k/v, as the layer hands them over (already in the pages: rewritten unchanged)
    slots = torch.cat([c.block_table[p // block_size] * block_size + p % block_size
                       for c in spans for p in [torch.arange(c.ctx_len - c.q_len, c.ctx_len)]])
    k = cache[0].view(-1, kv_heads, head_dim)[slots]
    v = cache[1].view(-1, kv_heads, head_dim)[slots]
    return q, k, v, cache, spans, slots


def run(q, k, v, cache, spans, slots, native: bool) -> torch.Tensor:
    meta = AttentionMetadata(slot_mapping=slots, prefills=spans,
                             native_prefill=NativePrefill.of(spans) if native else None)
    return paged_attention(q, k, v, cache, meta)


def measure(name: str, chunks: list[tuple[int, int]], seed: int, reps: int, busy: torch.Tensor) -> float:
    """Print both paths' time for one step; return the kernel's speed-up."""
    q, k, v, cache, spans, slots = make_case(chunks, seed)
    if not prefill_kernel_supports(cache):
        sys.exit("the native kernel is unavailable here (no C compiler, or BANASERVE_CPU_KERNEL=0)")
    err = (run(q, k, v, cache, spans, slots, True) - run(q, k, v, cache, spans, slots, False)).abs().max().item()
    t_torch = median_ms(lambda: run(q, k, v, cache, spans, slots, False), reps, busy)
    t_kernel = median_ms(lambda: run(q, k, v, cache, spans, slots, True), reps, busy)
    pairs = sum(n * (ctx - n) + n * (n + 1) // 2 for n, ctx in chunks)  # (query, key) pairs attended
    gflop = pairs * q.shape[1] * q.shape[2] * 4 / 1e9
    print(f"{name} ({sum(n for n, _ in chunks)} tokens): kernel {t_kernel:.2f} ms ({gflop / t_kernel * 1e3:.0f} "
          f"GFLOP/s), pytorch {t_torch:.2f} ms ({gflop / t_torch * 1e3:.0f} GFLOP/s), {t_torch / t_kernel:.2f}x, "
          f"max |diff| {err:.1e}")
    return t_torch / t_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="5 reps per case")
    args = ap.parse_args()
    reps = 5 if args.quick else args.reps
    busy = torch.randn(256, 256)
    ratios = [measure(name, chunks, args.seed, reps, busy) for name, chunks in CASES.items()]
    print(f"torch threads {torch.get_num_threads()}")
    print(f"prefill attention speed-up, native kernel / pytorch path (geomean): "
          f"{statistics.geometric_mean(ratios):.2f}x")


if __name__ == "__main__":
    main()
