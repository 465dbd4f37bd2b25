"""Attention over paged KV memory in plain PyTorch (runs on CPU and CUDA).

A layer's cache is one tensor [2, num_blocks, block_size, num_kv_heads, head_dim]. A step's
tokens are laid out prefill sequences first (each a contiguous chunk), then decode tokens
(one per sequence, sorted by context length). Where the native CPU kernels (kv/cpu_kernel.py)
apply, all prefill chunks run in one kernel call over the pages and all decodes in another.
Otherwise each prefill chunk runs one SDPA call (a chunk after earlier context gathers it and
masks), and decodes run in groups of similar context length, each one padded batch gathered
from the pages, so padding stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from banaserve.kv.cpu_kernel import paged_decode_attention, paged_prefill_attention


@dataclass(slots=True)
class PrefillChunk:
    """A chunk of `q_len` new tokens of one sequence whose context (incl. the chunk) is `ctx_len`."""

    q_start: int
    q_len: int
    ctx_len: int
    block_table: torch.Tensor  # [num_blocks_needed] int64, on the model device


@dataclass(slots=True)
class DecodeGroup:
    """Single-token queries [q_start, q_start + B) attending over padded block tables."""

    q_start: int
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with block 0
    ctx_lens: torch.Tensor  # [B] int64: context length of each query (incl. its own token)
    # [B, 1, 1, max_blocks * block_size] bool, real context slots; None: use the native CPU kernel,
    # which reads exactly ctx_lens tokens of each sequence and needs no mask or padding
    mask: torch.Tensor | None = None
    gather_index: torch.Tensor | None = None  # [2 * B * max_blocks]: K rows then V rows of the flat cache
    kernel_checked: bool = False  # tables bounds-checked by the kernel's wrapper (every layer's cache is alike)

    def kv_rows(self, num_blocks: int) -> torch.Tensor:
        """Row indices into the cache viewed as [2 * num_blocks, ...]: the group's K blocks, then its V blocks."""
        if self.gather_index is None:
            flat = self.block_tables.reshape(-1)
            self.gather_index = torch.cat((flat, flat + num_blocks))
        return self.gather_index


@dataclass(slots=True)
class NativePrefill:
    """All of a step's prefill chunks as the native CPU kernel takes them."""

    spans: torch.Tensor  # [C, 3] int64: q_start, q_len, ctx_len of each chunk
    block_tables: torch.Tensor  # [C, max_blocks] int64, padded with block 0
    checked: bool = False  # bounds-checked by the kernel's wrapper (every layer's cache is alike)

    @classmethod
    def of(cls, chunks: list[PrefillChunk]) -> NativePrefill:
        width = max(len(c.block_table) for c in chunks)
        tables = torch.zeros((len(chunks), width), dtype=torch.int64)
        for i, c in enumerate(chunks):
            tables[i, :len(c.block_table)] = c.block_table
        return cls(torch.tensor([(c.q_start, c.q_len, c.ctx_len) for c in chunks], dtype=torch.int64), tables)


@dataclass(slots=True)
class SampledRows:
    """The rows of a step whose logits are sampled, as single-token queries over their pages.

    Only these rows of the final layer's output are ever read, so that layer writes every row's
    K/V and then attends, projects and runs its MLP for these rows alone.
    """

    rows: torch.Tensor  # [S] int64: indices into the step's tokens
    decodes: list[DecodeGroup]  # q_start counts in the S rows


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot (block * block_size + offset) of every new token
    prefills: list[PrefillChunk] = field(default_factory=list)
    native_prefill: NativePrefill | None = None  # set where the native CPU prefill kernel applies
    decodes: list[DecodeGroup] = field(default_factory=list)
    # [>= 2 * B * max_blocks, block_size, Hkv, D] scratch that every layer gathers decode KV into.
    # A fresh tensor per layer would cost a page fault per 4 KiB on CPU (large allocations are
    # mmapped and unmapped each time), which measured slower than the attention itself.
    workspace: torch.Tensor | None = None
    sampled: SampledRows | None = None  # set by the engine: the final layer computes only these rows


def write_kv(kv_cache: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Store new keys and values [T, Hkv, D] at their cache slots."""
    _, nb, bs, h, d = kv_cache.shape
    kv_cache[0].view(nb * bs, h, d).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(nb * bs, h, d).index_copy_(0, slot_mapping, v)


def gather_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, ctx_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [ctx_len, Hkv, D] of one sequence, in token order."""
    h, d = kv_cache.shape[-2:]
    k = kv_cache[0].index_select(0, block_table).view(-1, h, d)[:ctx_len]
    v = kv_cache[1].index_select(0, block_table).view(-1, h, d)[:ctx_len]
    return k, v


def _prefill_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                  prefills: list[PrefillChunk], out: torch.Tensor) -> None:
    """The PyTorch path for prefill chunks: one SDPA call each, into `out`."""
    for p in prefills:
        qs = q[p.q_start:p.q_start + p.q_len].transpose(0, 1).unsqueeze(0)  # [1, Hq, q, D]
        if p.ctx_len == p.q_len:  # no earlier context: the fresh k/v are the whole context
            ks, vs = k[p.q_start:p.q_start + p.q_len], v[p.q_start:p.q_start + p.q_len]
            mask, causal = None, True
        else:
            ks, vs = gather_kv(kv_cache, p.block_table, p.ctx_len)
            offset = p.ctx_len - p.q_len
            rows = torch.arange(p.q_len, device=q.device)[:, None] + offset
            mask, causal = torch.arange(p.ctx_len, device=q.device)[None, :] <= rows, False
        o = F.scaled_dot_product_attention(
            qs, ks.transpose(0, 1).unsqueeze(0), vs.transpose(0, 1).unsqueeze(0),
            attn_mask=mask, is_causal=causal, enable_gqa=True,
        )
        out[p.q_start:p.q_start + p.q_len] = o[0].transpose(0, 1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                    meta: AttentionMetadata, only_sampled: bool = False) -> torch.Tensor:
    """Write the step's k/v into the cache and return attention outputs [T, Hq, D], or with
    `only_sampled` those of `meta.sampled`'s rows alone, [S, Hq, D]."""
    write_kv(kv_cache, meta.slot_mapping, k, v)
    if only_sampled:
        sampled = meta.sampled
        out = torch.empty((sampled.rows.numel(), *q.shape[1:]), dtype=q.dtype, device=q.device)
        _decode(q[sampled.rows], kv_cache, sampled.decodes, meta.workspace, out)
        return out
    native = meta.native_prefill
    q = q if native is None else q.contiguous()
    out = torch.empty_like(q)
    if native is not None:  # the chunks' own k/v are in the pages now: the kernel reads only pages
        paged_prefill_attention(q, kv_cache, native.block_tables, native.spans, out, not native.checked)
        native.checked = True
    else:
        _prefill_sdpa(q, k, v, kv_cache, meta.prefills, out)
    _decode(q, kv_cache, meta.decodes, meta.workspace, out)
    return out


def _decode(q: torch.Tensor, kv_cache: torch.Tensor, decodes: list[DecodeGroup], workspace: torch.Tensor | None,
            out: torch.Tensor) -> None:
    """Single-token queries of each decode group, over the pages, into `out`."""
    _, nb, bs, h, d = kv_cache.shape
    flat_cache = kv_cache.view(2 * nb, bs, h, d)
    for g in decodes:
        n, width = g.block_tables.shape
        if g.mask is None:
            out[g.q_start:g.q_start + n] = paged_decode_attention(q[g.q_start:g.q_start + n], kv_cache,
                                                                  g.block_tables, g.ctx_lens, not g.kernel_checked)
            g.kernel_checked = True
            continue
        rows = g.kv_rows(nb)
        ws = None if workspace is None else workspace[:rows.numel()]
        # index_select on the flat table: far faster than advanced indexing on CPU
        kv = torch.index_select(flat_cache, 0, rows, out=ws) if ws is not None else flat_cache.index_select(0, rows)
        kd = kv[:n * width].view(n, width * bs, h, d).transpose(1, 2)  # [B, Hkv, ctx, D]
        vd = kv[n * width:].view(n, width * bs, h, d).transpose(1, 2)
        # the query heads sharing a KV head become that head's query rows: no K/V repeat for GQA
        qd = q[g.q_start:g.q_start + n].view(n, h, -1, d)  # [B, Hkv, Hq / Hkv, D]
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=g.mask)
        out[g.q_start:g.q_start + n] = o.reshape(n, -1, d)
