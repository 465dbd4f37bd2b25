"""Attention over paged KV memory by the native CPU kernels (native/csrc/paged_decode.c and
paged_prefill.c).

Plain PyTorch cannot attend over pages without first gathering them into a padded copy, and on
CPU that copy plus SDPA's single-query path cost several times the memory traffic of reading
the KV once; for prefill, PyTorch's CPU flash attention reaches 30-70 GFLOP/s on prompt-sized
inputs where a matmul reaches 130, and a chunk after earlier context needs a gather and a mask.
The kernels read each sequence's pages in place.
"""

from __future__ import annotations

import torch

from banaserve.native.build import load_library


def kernel_supports(kv_cache: torch.Tensor) -> bool:
    """Whether decode attention over this cache can use the native kernel."""
    return kv_cache.device.type == "cpu" and kv_cache.dtype == torch.float32 and load_library() is not None


def paged_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           ctx_lens: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Attention of single-token queries q [B, Hq, D] over their pages; returns [B, Hq, D].

    block_tables [B, W] int64 (rows may be padded past each sequence's blocks), ctx_lens [B] int64.
    Every index is bounds-checked here (the C code trusts them); `check=False` skips that for
    tables already checked against a cache of the same shape (the other layers of a step).
    """
    lib = load_library()
    assert lib is not None, "call kernel_supports() first"
    _, nb, bs, hkv, d = kv_cache.shape
    b, hq, qd = q.shape
    if not kv_cache.is_contiguous():
        raise ValueError("paged decode kernel needs a contiguous KV cache")
    if qd != d or hq % hkv or block_tables.shape[0] != b or ctx_lens.shape != (b,):
        raise ValueError("query heads, head size, block tables and context lengths must match the cache and batch")
    if check and b and (int(ctx_lens.max()) > block_tables.shape[1] * bs or int(ctx_lens.min()) < 1):
        raise ValueError("context length outside the block table")
    if check and block_tables.numel() and (int(block_tables.min()) < 0 or int(block_tables.max()) >= nb):
        raise ValueError("block id outside the KV cache")
    q = q.contiguous()
    tables = block_tables.contiguous().to(torch.int64)
    lens = ctx_lens.contiguous().to(torch.int64)
    out = torch.empty_like(q)
    threads = max(1, min(torch.get_num_threads(), b))
    status = lib.paged_decode_attention_f32(
        q.data_ptr(), kv_cache[0].data_ptr(), kv_cache[1].data_ptr(), tables.data_ptr(), lens.data_ptr(),
        out.data_ptr(), b, tables.shape[1], bs, hq, hkv, d, d ** -0.5, threads)
    if status != 0:
        raise MemoryError("paged decode kernel could not allocate its score buffer")
    return out


def prefill_kernel_supports(kv_cache: torch.Tensor) -> bool:
    """Whether prefill attention over this cache can use the native kernel (head sizes in 16s)."""
    return kv_cache.shape[-1] % 16 == 0 and kernel_supports(kv_cache)


def paged_prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                            spans: torch.Tensor, out: torch.Tensor, check: bool = True) -> None:
    """Causal attention of prefill chunks over their pages, written into `out` [T, Hq, D].

    q [T, Hq, D] holds the step's tokens; chunk c's are rows spans[c, 0] : spans[c, 0] + spans[c, 1],
    at positions spans[c, 2] - spans[c, 1] onwards of a context spans[c, 2] long whose keys and values
    (the chunk's own included) are already in the pages of block_tables[c]. `check` as in
    paged_decode_attention.
    """
    lib = load_library()
    assert lib is not None, "call prefill_kernel_supports() first"
    _, nb, bs, hkv, d = kv_cache.shape
    t, hq, qd = q.shape
    if not (kv_cache.is_contiguous() and q.is_contiguous() and out.is_contiguous() and out.shape == q.shape):
        raise ValueError("paged prefill kernel needs contiguous q, out and KV cache of matching shapes")
    if spans.shape != (block_tables.shape[0], 3) or hq % hkv or d % 16 or qd != d:
        raise ValueError("need one span per block table row, query heads a multiple of KV heads, head size in 16s")
    if check and spans.numel():
        start, length, ctx = spans.unbind(1)
        if int(length.min()) < 1 or bool((length > ctx).any()) or int(start.min()) < 0 \
                or int((start + length).max()) > t:
            raise ValueError("prefill span outside the step's tokens or longer than its context")
        if int(ctx.max()) > block_tables.shape[1] * bs:
            raise ValueError("context length outside the block table")
        if int(block_tables.min()) < 0 or int(block_tables.max()) >= nb:
            raise ValueError("block id outside the KV cache")
    tables, spans = block_tables.contiguous().to(torch.int64), spans.contiguous().to(torch.int64)
    status = lib.paged_prefill_attention_f32(
        q.data_ptr(), kv_cache[0].data_ptr(), kv_cache[1].data_ptr(), tables.data_ptr(), spans.data_ptr(),
        out.data_ptr(), spans.shape[0], tables.shape[1], bs, hq, hkv, d, d ** -0.5, torch.get_num_threads())
    if status != 0:
        raise MemoryError("paged prefill kernel could not allocate its scratch")
