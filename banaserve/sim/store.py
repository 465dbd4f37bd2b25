"""The Global KV Cache Store in the simulator: the store's own index, time from a store link.

`SimStoreConnector` is the engine connector of a simulated instance. Its decisions are the live
ones: the same `StoreIndex` (store/index.py: two-phase puts, leases, LRU eviction above the
watermark, capacity in blocks) shared by every instance of the cluster, lookups of the prompt's
full blocks after the local prefix hit, leases at admission, a failed load when blocks were
evicted between lookup and lease, saves of every full block a step completes. What it adds is
time: loads and saves cross a per-instance store link (bandwidth, latency), layer by layer.
"""

from __future__ import annotations

from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.request import Request
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.sim.links import Link
from banaserve.store.index import StoreIndex
from banaserve.store.keys import RequestKeys


class SimStoreConnector(KVConnector):
    def __init__(self, index: StoreIndex, link: Link, block_bytes: int, block_size: int, num_layers: int,
                 root: bytes, clock):
        self.index = index
        self.link = link
        self.block_bytes = block_bytes  # all layers of one block
        self.block_size = block_size
        self.num_layers = num_layers
        self.keys = RequestKeys(root, block_size)
        self.clock = clock
        self.planned: dict[str, tuple[int, int, bool]] = {}  # rid -> (lease, blocks, ok)
        self.failed: set[str] = set()
        self.hit_tokens = 0
        self.num_failed = 0
        self._loads: list[tuple[int, int]] = []  # (lease, blocks) of this step
        self._puts: list[int] = []
        self._save_blocks = 0
        self._step_failed: set[str] = set()
        self._last = (0, 0)  # (blocks loaded, blocks saved) of the step just run

    def num_loadable_tokens(self, req: Request, num_local: int) -> int | None:
        if req.request_id in self.failed:
            return 0
        return self.index.lookup(self.keys.loadable(req)[num_local // self.block_size:]) * self.block_size

    def load_planned(self, req: Request, block_ids: list[int], start: int, num_tokens: int) -> None:
        bs = self.block_size
        keys = self.keys.loadable(req)[start // bs:(start + num_tokens) // bs]
        lease, slots = self.index.acquire(keys, self.clock())
        self.planned[req.request_id] = (lease, len(block_ids), len(slots) == len(keys) == len(block_ids))

    def request_finished(self, req: Request) -> bool:
        self.keys.forget(req.request_id)
        return False

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        bs, now = self.block_size, self.clock()
        for req, n in zip(batch.requests, batch.num_tokens):
            plan = self.planned.pop(req.request_id, None)
            if plan is not None:
                lease, blocks, ok = plan
                if ok:
                    self._loads.append((lease, blocks))
                else:
                    self.index.release(lease)
                    self._step_failed.add(req.request_id)
            first, last = req.num_computed_tokens // bs, (req.num_computed_tokens + n) // bs
            if last > first:
                keys = self.keys.upto(req, last)[first:]
                put, slots = self.index.reserve(keys, now)
                self._puts.append(put)
                self._save_blocks += sum(1 for s in slots if s >= 0)

    def step_end(self, start: float, compute_end: float) -> float:
        """When a step computing from `start` to `compute_end` ends, with its loads and saves.

        Layer l computes once its load is in and layer l-1 is done; with L equal layers, x the
        load time and c the compute time, the last layer ends at start + max(c + x/L, x + c/L).
        Saves leave layer by layer as layers finish and must be in before the commit."""
        load_blocks, save_blocks = self._last
        end = compute_end
        if load_blocks:
            nbytes = load_blocks * self.block_bytes
            arrive = self.link.send(start, nbytes)  # the whole load, as one FIFO transfer
            x, c, n = arrive - start, compute_end - start, self.num_layers
            end = start + max(c + x / n, x + c / n)
            self.hit_tokens += load_blocks * self.block_size
        if save_blocks:
            saved = self.link.push_layerwise(start, end, save_blocks * self.block_bytes, self.num_layers)
            end = max(end, saved)
        return end

    def end_step(self) -> None:
        """The simulated step ran (at its start, see sim/instance.py): release and commit now; its
        time is `step_end`'s. Committing at the start lets another instance read the blocks up to
        a step early, which we accept to keep the live connector's order of calls."""
        self._last = (sum(blocks for _, blocks in self._loads), self._save_blocks)
        for lease, _ in self._loads:
            self.index.release(lease)
        for put in self._puts:
            self.index.commit(put)
        self._loads, self._puts, self._save_blocks = [], [], 0

    def failed_loads(self) -> set[str]:
        failed, self._step_failed = self._step_failed, set()
        self.failed |= failed
        self.num_failed += len(failed)
        return failed
