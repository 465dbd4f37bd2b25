"""Turns a ScheduledBatch into model inputs, runs the forward over the paged KV cache, samples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from banaserve.engine.sampler import sample
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.kv.paged_attention import AttentionMetadata, PrefillChunk
from banaserve.models.decoder import DecoderModel


class ModelRunner:
    """Owns the model and the KV cache tensors of one instance."""

    def __init__(self, model: DecoderModel, kv_caches: list[torch.Tensor], block_size: int,
                 device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device

    def prepare(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Flat input ids, positions, attention metadata and the rows whose logits are sampled."""
        bs, dev = self.block_size, self.device
        ids: list[int] = []
        pos: list[int] = []
        slots: list[torch.Tensor] = []
        meta = AttentionMetadata(slot_mapping=torch.empty(0))
        sample_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_ctx: list[int] = []
        for req, n in zip(batch.requests, batch.num_tokens):
            start = req.num_computed_tokens
            end = start + n
            table = block_tables[req.request_id]
            q_start = len(ids)
            ids.extend(req.all_token_ids[start:end])
            pos.extend(range(start, end))
            if n > 1:
                bt = torch.tensor(table[:-(-end // bs)], dtype=torch.int64)
                meta.prefills.append(PrefillChunk(q_start, n, end, bt.to(dev, non_blocking=True)))
                p = torch.arange(start, end)
                slots.append(bt[p // bs] * bs + p % bs)
            else:
                decode_tables.append(table[:-(-end // bs)])
                decode_ctx.append(end)
                slots.append(torch.tensor([table[start // bs] * bs + start % bs]))
            if end == req.num_tokens:
                sample_rows.append(len(ids) - 1)
        if decode_tables:
            width = max(len(t) for t in decode_tables)
            padded = [t + [0] * (width - len(t)) for t in decode_tables]
            meta.num_decode_tokens = len(decode_tables)
            meta.decode_block_tables = torch.tensor(padded, dtype=torch.int64).to(dev, non_blocking=True)
            ctx = torch.tensor(decode_ctx)
            mask = torch.arange(width * bs)[None, :] < ctx[:, None]
            meta.decode_mask = mask[:, None, None, :].to(dev, non_blocking=True)
        meta.slot_mapping = torch.cat(slots).to(dev, non_blocking=True)
        input_ids = torch.tensor(ids, dtype=torch.int64).to(dev, non_blocking=True)
        positions = torch.tensor(pos, dtype=torch.int64).to(dev, non_blocking=True)
        return input_ids, positions, meta, sample_rows

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, block_tables: dict[str, list[int]],
                after_layer: Callable[[int], None] | None = None) -> dict[str, int]:
        """Run one step; return the sampled token of every request whose last token was computed."""
        input_ids, positions, meta, rows = self.prepare(batch, block_tables)
        hidden = self.model.embed(input_ids)
        hidden = self.model.forward_layers(hidden, positions, meta, self.kv_caches, after_layer=after_layer)
        if not rows:
            return {}
        logits = self.model.logits(hidden[rows]).float()
        sampling = [r for r, n in zip(batch.requests, batch.num_tokens)
                    if r.num_computed_tokens + n == r.num_tokens]
        return dict(zip((r.request_id for r in sampling), sample(logits, sampling)))

    @torch.inference_mode()
    def prompt_logits(self, token_ids: list[int], block_table: list[int]) -> torch.Tensor:
        """Logits [T, V] (fp32) at every position of one prompt written into `block_table`'s pages."""
        n, bs, dev = len(token_ids), self.block_size, self.device
        bt = torch.tensor(block_table, dtype=torch.int64)
        p = torch.arange(n)
        meta = AttentionMetadata(slot_mapping=(bt[p // bs] * bs + p % bs).to(dev),
                                 prefills=[PrefillChunk(0, n, n, bt.to(dev))])
        hidden = self.model.embed(torch.tensor(token_ids, device=dev))
        hidden = self.model.forward_layers(hidden, p.to(dev), meta, self.kv_caches)
        return self.model.logits(hidden).float()


def allocate_kv_caches(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                       head_dim: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """One zeroed [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer.

    Zeroed because padded decode attention reads (masked) unused slots, and garbage NaNs there
    would poison the output. On CPU the memory comes from calloc'd numpy pages, which the OS
    zeroes lazily, instead of torch.zeros' eager memset of gigabytes.
    """
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    if device.type != "cpu":
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
    if dtype == torch.bfloat16:  # numpy has no bfloat16: same-width int16 zeros, reinterpreted
        return [torch.from_numpy(np.zeros(shape, dtype=np.int16)).view(torch.bfloat16) for _ in range(num_layers)]
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16}[dtype]
    return [torch.from_numpy(np.zeros(shape, dtype=np_dtype)) for _ in range(num_layers)]

