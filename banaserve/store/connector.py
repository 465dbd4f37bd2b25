"""The engine's connector to the Global KV Cache Store: load hits layer by layer, save new blocks.

Scheduler side: a waiting request's full prompt blocks after its local prefix hit are looked up
in the store; the ones found are leased and planned into the blocks the scheduler allocated.
Worker side: at the step's start a copy thread loads the planned blocks layer after layer from
the arena into the KV cache, and `before_layer(l)` waits only for layer l (layer l+1 loads while
layer l computes). Every full block a step completes is reserved in the store and copied out as
soon as its layer is written (`after_layer`); `end_step` waits for the copies, commits the puts
(readers never see a partial block) and releases the leases. A load the store could not lease
fully is reported failed and recomputed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.request import Request
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.kv.block_hash import BlockHash
from banaserve.store.client import StoreClient
from banaserve.store.keys import RequestKeys
from banaserve.transfer.layout import block_runs
from banaserve.transfer.pusher import PushWorker


@dataclass(slots=True)
class Load:
    rid: str
    blocks: list[int]  # engine blocks to fill
    slots: list[int]  # arena slots to read
    lease: int
    ok: bool


@dataclass(slots=True)
class StoreCounters:
    lookups: int = 0
    hit_tokens: int = 0  # tokens loaded from the store
    loaded_bytes: int = 0
    saved_blocks: int = 0
    saved_bytes: int = 0
    failed_loads: int = 0
    load_s: float = 0.0  # time the copy thread spent loading
    load_wait_s: float = 0.0  # time before_layer spent waiting (load not hidden by compute)


@dataclass(slots=True)
class _Step:
    loads: list[Load] = field(default_factory=list)
    saves: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (engine blocks, slots)
    puts: list[int] = field(default_factory=list)
    ready: list[threading.Event] = field(default_factory=list)


class StoreConnector(KVConnector):
    def __init__(self, client: StoreClient, kv_caches: list[torch.Tensor], block_size: int, root: BlockHash,
                 save: bool = True, overlap: bool = True, rate: float | None = None):
        self.client = client
        self.kv_caches = kv_caches
        self.arena = client.arena.tensors
        self.block_size = block_size
        self.keys = RequestKeys(root, block_size)
        self.save = save
        self.overlap = overlap  # False: the first layer waits for every layer's load (a baseline)
        self.rate = rate  # bytes/s: a throttled store link (benchmarks), None for memory speed
        self.worker = PushWorker("kv-store")
        self.planned: dict[str, Load] = {}
        self.failed: set[str] = set()  # requests whose load failed: never offered one again
        self.counters = StoreCounters()
        self._step = _Step()
        self._step_failed: set[str] = set()
        self._block_bytes = client.layout.block_bytes * len(kv_caches)

    # ----- scheduler side -----

    def num_loadable_tokens(self, req: Request, num_local: int) -> int | None:
        if req.request_id in self.failed or not self.client.available:
            return 0
        keys = self.keys.loadable(req)[num_local // self.block_size:]
        if not keys:
            return 0
        self.counters.lookups += 1
        return self.client.lookup(keys) * self.block_size

    def load_planned(self, req: Request, block_ids: list[int], start: int, num_tokens: int) -> None:
        bs = self.block_size
        keys = self.keys.loadable(req)[start // bs:(start + num_tokens) // bs]
        lease, slots = self.client.get(keys)
        ok = len(slots) == len(keys) == len(block_ids)  # evicted since the lookup: recompute
        self.planned[req.request_id] = Load(req.request_id, block_ids, slots[:len(block_ids)], lease, ok)

    def request_finished(self, req: Request) -> bool:
        self.keys.forget(req.request_id)
        load = self.planned.pop(req.request_id, None)
        if load is not None:
            self.client.release(load.lease)
        return False

    # ----- worker side -----

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        step = self._step = _Step()
        for req in batch.requests:
            load = self.planned.pop(req.request_id, None)
            if load is None:
                continue
            if load.ok:
                step.loads.append(load)
            else:
                self._step_failed.add(req.request_id)
                self.client.release(load.lease)
        if step.loads:
            step.ready = [threading.Event() for _ in self.kv_caches]
            self.worker.submit("load", self._load_all, step)
        if self.save:
            self._plan_saves(batch, block_tables)

    def _load_all(self, step: _Step) -> None:
        """On the copy thread: every planned block, layer after layer, signalling each layer."""
        t = time.perf_counter()
        layer_bytes = sum(len(load.blocks) for load in step.loads) * self.client.layout.block_bytes
        try:
            for layer, (cache, arena) in enumerate(zip(self.kv_caches, self.arena)):
                for load in step.loads:
                    for s, d, n in block_runs(load.slots, load.blocks):
                        cache[:, d:d + n].copy_(arena[:, s:s + n])
                if self.rate:  # as if the bytes came over a link of this rate
                    time.sleep(max(0.0, t + (layer + 1) * layer_bytes / self.rate - time.perf_counter()))
                if self.overlap:
                    step.ready[layer].set()
        finally:
            for ev in step.ready:
                ev.set()
            self.counters.load_s += time.perf_counter() - t

    def _plan_saves(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        bs, step = self.block_size, self._step
        for req, n in zip(batch.requests, batch.num_tokens):
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            first, last = start // bs, end // bs  # the full blocks this step completes
            if last <= first or not self.client.available:
                continue
            keys = self.keys.upto(req, last)[first:]
            put, slots = self.client.put(keys)
            table = block_tables[req.request_id]
            pairs = [(table[first + i], s) for i, s in enumerate(slots) if s >= 0]
            if put:
                step.puts.append(put)
            if pairs:
                step.saves.append(([b for b, _ in pairs], [s for _, s in pairs]))

    def before_layer(self, layer: int) -> None:
        if self._step.ready and not self._step.ready[layer].is_set():
            t = time.perf_counter()
            self._step.ready[layer].wait()
            self.counters.load_wait_s += time.perf_counter() - t

    def after_layer(self, layer: int) -> None:
        if self._step.saves:
            self.worker.submit("save", self._save_layer, layer, self._step.saves)

    def _save_layer(self, layer: int, saves: list[tuple[list[int], list[int]]]) -> None:
        cache, arena = self.kv_caches[layer], self.arena[layer]
        for blocks, slots in saves:
            for s, d, n in block_runs(blocks, slots):
                arena[:, d:d + n].copy_(cache[:, s:s + n])

    def end_step(self) -> None:
        step = self._step
        errors = self.worker.flush()
        c = self.counters
        for load in step.loads:
            self.client.release(load.lease)
            if "load" in errors:
                self._step_failed.add(load.rid)
            else:
                c.hit_tokens += len(load.blocks) * self.block_size
                c.loaded_bytes += len(load.blocks) * self._block_bytes
        for put in step.puts:
            self.client.commit(put, "save" not in errors)
        if "save" not in errors:
            n = sum(len(b) for b, _ in step.saves)
            c.saved_blocks += n
            c.saved_bytes += n * self._block_bytes
        self._step = _Step()

    def failed_loads(self) -> set[str]:
        failed, self._step_failed = self._step_failed, set()
        self.failed |= failed
        self.counters.failed_loads += len(failed)
        return failed

    def close(self) -> None:
        self.worker.close()
        self.client.close()
