"""The native CPU decode and prefill kernels against the plain PyTorch paged attention they replace."""

from __future__ import annotations

import pytest
import torch

from banaserve.kv import cpu_kernel
from banaserve.kv.paged_attention import AttentionMetadata, DecodeGroup, NativePrefill, PrefillChunk, paged_attention
from banaserve.native.build import load_library

pytestmark = pytest.mark.skipif(load_library() is None, reason="no C compiler for the CPU kernels")


def random_case(seed: int, num_seqs: int, heads: int, kv_heads: int, head_dim: int, block_size: int,
                max_ctx: int):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_ctx + 1, (num_seqs,), generator=g)
    width = int((lens.max() + block_size - 1) // block_size)
    num_blocks = num_seqs * width + 7
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=g)
    # distinct, scattered blocks per sequence, padded with block 0 like the runner does
    ids = torch.randperm(num_blocks, generator=g)[:num_seqs * width].view(num_seqs, width)
    for i, n in enumerate(lens.tolist()):
        ids[i, (n + block_size - 1) // block_size:] = 0
    q = torch.randn(num_seqs, heads, head_dim, generator=g)
    return q, cache, ids, lens


def reference(q, cache, tables, lens) -> torch.Tensor:
    """The PyTorch path: gather pages, masked SDPA."""
    bs = cache.shape[2]
    mask = (torch.arange(tables.shape[1] * bs)[None, :] < lens[:, None])[:, None, None, :]
    meta = AttentionMetadata(slot_mapping=torch.empty(0, dtype=torch.int64),
                             decodes=[DecodeGroup(0, tables, lens, mask)])
    # paged_attention writes the step's k/v first; write nothing (empty slot mapping)
    empty = torch.empty(0, cache.shape[3], cache.shape[4])
    return paged_attention(q, empty, empty, cache, meta)


@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", [
    (6, 2, 64, 16),   # the small preset: GQA 3
    (4, 4, 128, 8),   # MHA, head_dim 128 (qwen3-style)
    (8, 1, 32, 16),   # MQA, a head size without a specialised copy
    (12, 4, 64, 1),   # one token per block
    (4, 2, 96, 16),   # a head wider than one 64-float accumulator pass
    (4, 2, 20, 16),   # a head size that is no multiple of 8: the scalar path
])
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_pytorch_path(heads, kv_heads, head_dim, block_size, seed):
    q, cache, tables, lens = random_case(seed, 9, heads, kv_heads, head_dim, block_size, max_ctx=300)
    ref = reference(q, cache, tables, lens)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        out = cpu_kernel.paged_decode_attention(q, cache, tables, lens)
        assert (out - ref).abs().max().item() < 1e-5
    torch.set_num_threads(2)


def test_kernel_through_paged_attention_metadata():
    """A group without a mask takes the kernel inside paged_attention, with the same result."""
    q, cache, tables, lens = random_case(3, 5, 6, 2, 64, 16, max_ctx=100)
    ref = reference(q, cache, tables, lens)
    meta = AttentionMetadata(slot_mapping=torch.empty(0, dtype=torch.int64), decodes=[DecodeGroup(0, tables, lens)])
    empty = torch.empty(0, 2, 64)
    assert (paged_attention(q, empty, empty, cache, meta) - ref).abs().max().item() < 1e-5


def test_kernel_rejects_out_of_range_indices():
    q, cache, tables, lens = random_case(0, 3, 6, 2, 64, 16, max_ctx=40)
    bad = tables.clone()
    bad[0, 0] = cache.shape[1]
    with pytest.raises(ValueError, match="block id"):
        cpu_kernel.paged_decode_attention(q, cache, bad, lens)
    with pytest.raises(ValueError, match="context length"):
        cpu_kernel.paged_decode_attention(q, cache, tables, lens + tables.shape[1] * 16)
    with pytest.raises(ValueError, match="context length"):
        cpu_kernel.paged_decode_attention(q, cache, tables, lens * 0)


def prefill_case(seed: int, num_chunks: int, heads: int, kv_heads: int, head_dim: int, block_size: int,
                 max_ctx: int):
    """Chunks of random length at random offsets into their contexts (offset 0: a fresh prompt),
    their keys and values already in scattered pages, laid out in one step like the runner does."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(1, max_ctx + 1, (num_chunks,), generator=g)
    q_len = [int(torch.randint(1, n + 1, (1,), generator=g)) if i % 2 else n for i, n in enumerate(ctx.tolist())]
    width = int((ctx.max() + block_size - 1) // block_size)
    cache = torch.randn(2, num_chunks * width + 3, block_size, kv_heads, head_dim, generator=g)
    ids = torch.randperm(cache.shape[1], generator=g)[:num_chunks * width].view(num_chunks, width)
    chunks, start = [], 0
    for i, (n, c) in enumerate(zip(q_len, ctx.tolist())):
        chunks.append(PrefillChunk(start, n, c, ids[i, :(c + block_size - 1) // block_size].clone()))
        start += n
    q = torch.randn(start, heads, head_dim, generator=g)
    return q, cache, chunks


def prefill_through_paged_attention(q, cache, chunks, native: bool) -> torch.Tensor:
    """paged_attention over the chunks, natively or by the PyTorch path (SDPA per chunk, masked
    over gathered pages). Each chunk's own k/v are read back from the pages and rewritten unchanged."""
    _, nb, bs, h, d = cache.shape
    slots = torch.cat([c.block_table[p // bs] * bs + p % bs
                       for c in chunks for p in [torch.arange(c.ctx_len - c.q_len, c.ctx_len)]])
    k, v = cache[0].view(-1, h, d)[slots], cache[1].view(-1, h, d)[slots]
    meta = AttentionMetadata(slot_mapping=slots, prefills=chunks,
                             native_prefill=NativePrefill.of(chunks) if native else None)
    return paged_attention(q, k, v, cache, meta)


@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", [
    (6, 2, 64, 16),   # the small preset: GQA 3
    (4, 4, 128, 8),   # MHA, head_dim 128 (qwen3-style)
    (8, 1, 32, 16),   # MQA, a head size without a specialised copy
    (12, 4, 80, 1),   # one token per block, head size 5 x 16
])
@pytest.mark.parametrize("seed", [0, 1])
def test_prefill_kernel_matches_pytorch_path(heads, kv_heads, head_dim, block_size, seed):
    q, cache, chunks = prefill_case(seed, 5, heads, kv_heads, head_dim, block_size, max_ctx=200)
    ref = prefill_through_paged_attention(q, cache, chunks, native=False)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        out = prefill_through_paged_attention(q, cache, chunks, native=True)
        assert (out - ref).abs().max().item() < 1e-5
    torch.set_num_threads(2)


def test_prefill_kernel_long_chunks_cross_many_tiles():
    """Contexts far longer than one kernel tile, chunk starts off any tile boundary."""
    q, cache, chunks = prefill_case(7, 3, 6, 2, 64, 16, max_ctx=1500)
    ref = prefill_through_paged_attention(q, cache, chunks, native=False)
    assert (prefill_through_paged_attention(q, cache, chunks, native=True) - ref).abs().max().item() < 1e-5


def test_prefill_kernel_rejects_bad_input():
    q, cache, chunks = prefill_case(0, 3, 6, 2, 64, 16, max_ctx=40)
    native = NativePrefill.of(chunks)
    out = torch.empty_like(q)
    bad = native.block_tables.clone()
    bad[0, 0] = cache.shape[1]
    with pytest.raises(ValueError, match="block id"):
        cpu_kernel.paged_prefill_attention(q, cache, bad, native.spans, out)
    longer = native.spans.clone()
    longer[0, 2] = native.block_tables.shape[1] * 16 + 1
    with pytest.raises(ValueError, match="context length"):
        cpu_kernel.paged_prefill_attention(q, cache, native.block_tables, longer, out)
    past_end = native.spans.clone()
    past_end[-1, 0] = q.shape[0]
    with pytest.raises(ValueError, match="span"):
        cpu_kernel.paged_prefill_attention(q, cache, native.block_tables, past_end, out)
    with pytest.raises(ValueError, match="head size"):
        cpu_kernel.paged_prefill_attention(q[..., :40].contiguous(), cache[..., :40].contiguous(),
                                           native.block_tables, native.spans, out[..., :40].contiguous())


def test_kernels_reject_a_query_head_size_unlike_the_cache():
    q, cache, tables, lens = random_case(0, 3, 6, 2, 64, 16, max_ctx=40)
    with pytest.raises(ValueError, match="head size"):
        cpu_kernel.paged_decode_attention(q[..., :32].contiguous(), cache, tables, lens)
    qp, cache, chunks = prefill_case(0, 2, 6, 2, 64, 16, max_ctx=40)
    native = NativePrefill.of(chunks)
    small = qp[..., :32].contiguous()
    with pytest.raises(ValueError, match="head size"):
        cpu_kernel.paged_prefill_attention(small, cache, native.block_tables, native.spans, torch.empty_like(small))
