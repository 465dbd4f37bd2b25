"""Turns a ScheduledBatch into model inputs, runs the forward over the paged KV cache, samples."""

from __future__ import annotations

import ctypes
import math
import mmap
import platform
from collections.abc import Callable

import numpy as np
import torch

from banaserve.engine.request import Request
from banaserve.engine.sampler import sample
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.kv.cpu_kernel import kernel_supports, prefill_kernel_supports
from banaserve.kv.paged_attention import AttentionMetadata, DecodeGroup, NativePrefill, PrefillChunk, SampledRows
from banaserve.models.config import ModelConfig
from banaserve.models.decoder import DecoderModel

# What a step returns: the stage holding the final layer samples, so request id -> token for
# every request whose last token was computed; any earlier stage hands on its output hidden
# states [T, hidden], every row in the order prepare() lays the step's tokens out.
StepOutput = dict[str, int] | torch.Tensor


class ModelRunner:
    """Owns the model (all layers, or a stage holding layers [a, b)) and the KV cache tensors of
    one instance: one per held layer, layer i's at `kv_caches[i - a]`."""

    def __init__(self, model: DecoderModel, kv_caches: list[torch.Tensor], block_size: int,
                 device: torch.device):
        start, end = model.layer_range
        if len(kv_caches) != end - start:
            raise ValueError(f"{len(kv_caches)} KV caches for the {end - start} layers [{start}, {end})")
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self._workspace: torch.Tensor | None = None  # decode gather scratch, grown on demand
        self.native_decode = kernel_supports(kv_caches[0]) if kv_caches else False
        self.native_prefill = prefill_kernel_supports(kv_caches[0]) if kv_caches else False

    @property
    def layer_range(self) -> tuple[int, int]:
        """Absolute [a, b) of the layers this runner holds; (0, num_layers) for a full model."""
        return self.model.layer_range

    def kv_cache(self, layer: int) -> torch.Tensor:
        """The KV cache tensor of absolute layer `layer`, which this runner must hold."""
        start, end = self.layer_range
        if not start <= layer < end:
            raise IndexError(f"layer {layer} is not held here (layers [{start}, {end}))")
        return self.kv_caches[layer - start]

    def _decode_workspace(self, groups: list[DecodeGroup]) -> torch.Tensor | None:
        """Scratch big enough for the largest decode group's K and V blocks, kept across steps."""
        need = max((2 * g.block_tables.numel() for g in groups), default=0)
        if need == 0:
            return None
        if self._workspace is None or self._workspace.shape[0] < need:
            _, _, bs, h, d = self.kv_caches[0].shape
            # grow geometrically so a slowly rising context does not reallocate every step
            size = max(need, int(1.25 * self._workspace.shape[0]) if self._workspace is not None else 0)
            self._workspace = torch.empty((size, bs, h, d), dtype=self.kv_caches[0].dtype, device=self.device)
        return self._workspace

    def prepare(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[Request]]:
        """Flat input ids, positions, attention metadata, and the requests to sample, in the order
        of `meta.sampled.rows` (the rows the final layer computes; None where that is every row)."""
        bs, dev = self.block_size, self.device
        ids: list[int] = []
        pos: list[int] = []
        slots: list[torch.Tensor] = []
        meta = AttentionMetadata(slot_mapping=torch.empty(0))
        to_sample: list[tuple[int, int, Request]] = []  # (context length, row, request)
        work = list(zip(batch.requests, batch.num_tokens))
        for req, n in work:
            if n == 1:
                continue
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            q_start = len(ids)
            ids.extend(req.all_token_ids[start:end])
            pos.extend(range(start, end))
            bt = torch.tensor(block_tables[req.request_id][:-(-end // bs)], dtype=torch.int64)
            meta.prefills.append(PrefillChunk(q_start, n, end, bt.to(dev, non_blocking=True)))
            p = torch.arange(start, end)
            slots.append(bt[p // bs] * bs + p % bs)
            if end == req.num_tokens:
                to_sample.append((end, len(ids) - 1, req))
        decodes = sorted((req for req, n in work if n == 1), key=lambda r: r.num_computed_tokens)
        decode_start = len(ids)
        decode_slots: list[int] = []
        for req in decodes:
            start = req.num_computed_tokens
            ids.append(req.all_token_ids[start])
            pos.append(start)
            decode_slots.append(block_tables[req.request_id][start // bs] * bs + start % bs)
            if start + 1 == req.num_tokens:
                to_sample.append((start + 1, len(ids) - 1, req))
        if meta.prefills and self.native_prefill:
            meta.native_prefill = NativePrefill.of(meta.prefills)
        if decodes:
            slots.append(torch.tensor(decode_slots, dtype=torch.int64))
            meta.decodes = self._decode_groups(decode_start, [r.num_computed_tokens + 1 for r in decodes],
                                               [block_tables[r.request_id] for r in decodes])
        to_sample.sort(key=lambda e: e[0])  # by context, as decode groups want them
        rows = [row for _, row, _ in to_sample]
        # a pure decode step samples every row, in order; a stage short of the final layer samples none
        if rows != list(range(len(ids))) and self.model.is_last:
            meta.sampled = SampledRows(
                torch.tensor(rows, dtype=torch.int64).to(dev, non_blocking=True),
                self._decode_groups(0, [ctx for ctx, _, _ in to_sample],
                                    [block_tables[r.request_id] for _, _, r in to_sample]))
        if not self.native_decode:
            meta.workspace = self._decode_workspace(meta.decodes + (meta.sampled.decodes if meta.sampled else []))
        meta.slot_mapping = torch.cat(slots).to(dev, non_blocking=True)
        input_ids = torch.tensor(ids, dtype=torch.int64).to(dev, non_blocking=True)
        positions = torch.tensor(pos, dtype=torch.int64).to(dev, non_blocking=True)
        return input_ids, positions, meta, [r for _, _, r in to_sample]

    def _decode_groups(self, q_start: int, ctx_lens: list[int], tables: list[list[int]]) -> list[DecodeGroup]:
        """Single-token queries q_start, q_start + 1, ... with these context lengths (ascending) over
        these block tables (cut here to the blocks each context needs): one group for the native
        kernel; else groups padded <= ~25%."""
        bs, dev = self.block_size, self.device
        tables = [t[:-(-c // bs)] for c, t in zip(ctx_lens, tables)]
        groups: list[DecodeGroup] = []
        i = 0
        while i < len(ctx_lens):
            j = len(ctx_lens) if self.native_decode else i + 1
            limit = len(tables[i]) * 1.25 + 1
            while j < len(ctx_lens) and len(tables[j]) <= limit:
                j += 1
            width = max(len(t) for t in tables[i:j])
            padded = [t + [0] * (width - len(t)) for t in tables[i:j]]
            ctx = torch.tensor(ctx_lens[i:j], dtype=torch.int64)
            mask = None
            if not self.native_decode:
                mask = (torch.arange(width * bs)[None, :] < ctx[:, None])[:, None, None, :].to(dev, non_blocking=True)
            groups.append(DecodeGroup(q_start + i, torch.tensor(padded, dtype=torch.int64).to(dev, non_blocking=True),
                                      ctx.to(dev, non_blocking=True), mask))
            i = j
        return groups

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, block_tables: dict[str, list[int]],
                hidden_in: torch.Tensor | None = None,
                before_layer: Callable[[int], None] | None = None,
                after_layer: Callable[[int], None] | None = None) -> StepOutput:
        """Run one step over the held layers (see StepOutput for what comes back).

        The first stage embeds the step's input ids; a later one takes `hidden_in` [T, hidden], the
        previous stage's output for the same batch. Every stage sees the same block tables, each
        over its own layers' KV tensors. The hooks get absolute layer ids.
        """
        input_ids, positions, meta, reqs = self.prepare(batch, block_tables)
        if self.model.is_first != (hidden_in is None):
            raise ValueError("the first stage embeds input ids and takes no hidden_in; a later stage needs it")
        if hidden_in is not None and hidden_in.shape != (input_ids.shape[0], self.model.cfg.hidden_size):
            raise ValueError(f"hidden_in {tuple(hidden_in.shape)} does not match the step's "
                             f"{input_ids.shape[0]} tokens of width {self.model.cfg.hidden_size}")
        hidden = self.model.embed(input_ids) if hidden_in is None else hidden_in
        # on the last stage, the sampled rows' final hidden states alone (see forward_layers)
        hidden = self.model.forward_layers(hidden, positions, meta, self.kv_caches,
                                           before_layer=before_layer, after_layer=after_layer)
        if not self.model.is_last:
            return hidden
        if not reqs:
            return {}
        logits = self.model.logits(hidden).float()
        return dict(zip((r.request_id for r in reqs), sample(logits, reqs)))

    @torch.inference_mode()
    def prompt_logits(self, token_ids: list[int], block_table: list[int]) -> torch.Tensor:
        """Logits [T, V] (fp32) at every position of one prompt written into `block_table`'s pages.
        Full models only: a stage has no embedding or no LM head."""
        if self.layer_range != (0, self.model.cfg.num_layers):
            raise ValueError(f"prompt_logits needs the full model, not layers {self.layer_range}")
        n, bs, dev = len(token_ids), self.block_size, self.device
        bt = torch.tensor(block_table, dtype=torch.int64)
        p = torch.arange(n)
        meta = AttentionMetadata(slot_mapping=(bt[p // bs] * bs + p % bs).to(dev),
                                 prefills=[PrefillChunk(0, n, n, bt.to(dev))])
        if self.native_prefill:
            meta.native_prefill = NativePrefill.of(meta.prefills)
        hidden = self.model.embed(torch.tensor(token_ids, device=dev))
        hidden = self.model.forward_layers(hidden, p.to(dev), meta, self.kv_caches)
        return self.model.logits(hidden).float()


def allocate_kv_caches(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                       head_dim: int, dtype: torch.dtype, device: torch.device,
                       prefault: bool = True) -> list[torch.Tensor]:
    """One zeroed [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer.

    Zeroed because padded decode attention reads (masked) unused slots, and garbage NaNs there
    would poison the output. On CPU the memory is anonymous mmap pages, which the OS zeroes. With
    `prefault` they are made resident here, at startup, rather than faulted in one 4 KiB page at a
    time as blocks first fill: on our VM that cost the first 95k prompt tokens 2-4 s of page faults
    inside the forward pass (docs/design-decisions.md, "KV memory is resident from the start").
    """
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    if device.type != "cpu":
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
    nbytes = math.prod(shape) * dtype.itemsize
    return [_zeroed_pages(nbytes, prefault).view(dtype).view(shape) for _ in range(num_layers)]


def allocate_stage_kv_caches(cfg: ModelConfig, layer_range: tuple[int, int], num_blocks: int,
                             block_size: int, dtype: torch.dtype, device: torch.device,
                             prefault: bool = True) -> list[torch.Tensor]:
    """KV caches for layers [a, b) of `cfg`'s model only (b - a tensors, as ModelRunner wants)."""
    start, end = layer_range
    return allocate_kv_caches(end - start, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                              dtype, device, prefault)


MADV_POPULATE_WRITE = 23  # Linux 5.14+; Python's mmap module has no name for it before 3.13


def _zeroed_pages(nbytes: int, prefault: bool) -> torch.Tensor:
    """`nbytes` of zeroed anonymous memory as a uint8 tensor (which keeps the mapping alive)."""
    buf = mmap.mmap(-1, nbytes)
    if prefault:
        try:
            buf.madvise(MADV_POPULATE_WRITE)  # one call: far cheaper than a fault per page
        except (OSError, AttributeError):  # older kernel or not Linux: touch every page instead
            np.frombuffer(buf, dtype=np.uint8)[::mmap.PAGESIZE] = 0
    return torch.frombuffer(buf, dtype=torch.uint8)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
RETAINED_ALLOCATION_BYTES = 256 << 20  # larger blocks are still mmapped, and unmapped when freed
RETAINED_FREE_BYTES = 512 << 20  # free memory at the top of the heap kept before any is returned


def retain_freed_memory() -> bool:
    """Let glibc keep the memory that freed activations held, for the next step to reuse.

    glibc hands allocations above a dynamic threshold (at most 32 MiB) to mmap and trims the
    heap top once twice that much is free, so a prefill step's activations (16 MiB for the small
    preset's gate_up output at 2048 tokens) went back to the OS when freed and came back as fresh
    pages, zeroed by the kernel one 4 KiB fault at a time: about 500k faults and a tenth of the
    CPU time of benchmarks/offline_throughput.py. This is process-wide and only changes when
    memory is returned, never what is computed. Returns False where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, RETAINED_ALLOCATION_BYTES)
                and libc.mallopt(M_TRIM_THRESHOLD, RETAINED_FREE_BYTES))
