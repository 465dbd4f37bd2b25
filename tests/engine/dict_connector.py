"""A KV connector that saves and loads full blocks through a dict in this process's memory.

It exercises both halves of the seam (kv_connector.py) the way a store connector would: blocks
are keyed by the engine's chained block hashes, saved layer by layer as they are computed
(`after_layer`), and loaded layer by layer into the blocks the scheduler planned (`before_layer`).
`share` is the fraction of the blocks found in the dict that a request loads; requests named in
`fail` get garbage instead of their KV and are reported in `failed_loads`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.request import Request
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.kv.block_hash import BlockHash, hash_blocks


@dataclass
class Load:
    rid: str
    blocks: list[int]
    keys: list[BlockHash]
    fail: bool


class DictConnector(KVConnector):
    def __init__(self, kv_caches: list[torch.Tensor], block_size: int, root: BlockHash,
                 store: dict[BlockHash, list[torch.Tensor]], share: float = 1.0, fail: set[str] = frozenset()):
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.root = root
        self.store = store
        self.share = share
        self.fail = set(fail)
        self.failed: set[str] = set()  # reported once, then never offered a load again
        self.planned: dict[str, Load] = {}
        self.loads: list[Load] = []
        self.saves: list[tuple[int, BlockHash]] = []
        self.loaded_tokens = 0
        self.num_failures = 0
        self._step_failed: set[str] = set()

    # ----- scheduler side -----

    def num_loadable_tokens(self, req: Request, num_local: int) -> int | None:
        if req.request_id in self.failed:
            return 0
        bs = self.block_size
        keys = hash_blocks(self.root, req.all_token_ids, bs)
        found = 0
        for key in keys[num_local // bs:]:
            if key not in self.store:
                break
            found += 1
        return int(found * self.share) * bs

    def load_planned(self, req: Request, block_ids: list[int], start: int, num_tokens: int) -> None:
        bs = self.block_size
        keys = hash_blocks(self.root, req.all_token_ids, bs)[start // bs:(start + num_tokens) // bs]
        assert len(keys) == len(block_ids)
        self.planned[req.request_id] = Load(req.request_id, block_ids, keys, req.request_id in self.fail)

    # ----- worker side -----

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        bs = self.block_size
        self.loads = [self.planned.pop(r.request_id) for r in batch.requests if r.request_id in self.planned]
        saves: dict[BlockHash, int] = {}
        for req, n in zip(batch.requests, batch.num_tokens):
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            keys = hash_blocks(self.root, req.all_token_ids[:end], bs)
            table = block_tables[req.request_id]
            saves.update((keys[i], table[i]) for i in range(start // bs, end // bs) if keys[i] not in self.store)
        self.saves = [(block, key) for key, block in saves.items()]

    def before_layer(self, layer: int) -> None:
        cache = self.kv_caches[layer]
        for load in self.loads:
            for block, key in zip(load.blocks, load.keys):
                cache[:, block] = torch.randn_like(cache[:, block]) if load.fail else self.store[key][layer]
            if layer == 0:
                if load.fail:
                    self._step_failed.add(load.rid)
                else:
                    self.loaded_tokens += len(load.blocks) * self.block_size

    def after_layer(self, layer: int) -> None:
        cache = self.kv_caches[layer]
        for block, key in self.saves:
            self.store.setdefault(key, []).append(cache[:, block].clone())

    def end_step(self) -> None:
        self.loads = []

    def failed_loads(self) -> set[str]:
        failed, self._step_failed = self._step_failed, set()
        self.failed |= failed
        self.num_failures += len(failed)
        return failed
