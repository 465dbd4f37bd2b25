"""Prefill side of PD disaggregation: push each transfer request's KV layer by layer as it is computed.

For every step, `start_step` works out which of the request's blocks the step completes (from
what the peer already has: its prefix-cache hit, then what earlier chunks pushed), `after_layer`
queues that layer's push on the PushWorker thread (so it overlaps the next layer's compute) and
`end_step` waits for them, then closes finished transfers. Blocks are copied out before the step
returns, so the engine frees them as usual when the request finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import zmq

from banaserve.cluster.messages import PushSpec
from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.transfer.layout import KVLayout
from banaserve.transfer.pusher import PushWorker
from banaserve.transfer.shm_channel import ShmPushTarget
from banaserve.transfer.tcp_channel import TcpPushTarget


@dataclass(slots=True)
class Outgoing:
    """One request's transfer to a decode instance."""

    tid: int
    target: ShmPushTarget | TcpPushTarget
    dst_blocks: list[int]
    skip_tokens: int  # the peer had these already (its prefix cache): never written
    sent_tokens: int  # KV of tokens [0, sent_tokens) is at the peer
    frames: int = 0


@dataclass(slots=True)
class _Push:
    rid: str
    out: Outgoing
    src_blocks: list[int]
    first_index: int
    end: int
    last: bool
    dst_blocks: list[int] = field(default_factory=list)


class PushConnector(KVConnector):
    """Engine connector of a prefill instance. `results[rid]` is None (pushed) or an error, once done."""

    def __init__(self, kv_caches: list[torch.Tensor], layout: KVLayout):
        self.kv_caches = kv_caches
        self.layout = layout
        self.worker = PushWorker()
        self.outgoing: dict[str, Outgoing] = {}
        self.results: dict[str, str | None] = {}
        self.targets: dict[str, ShmPushTarget | TcpPushTarget] = {}
        self.transfers_ok = 0
        self.transfers_failed = 0
        self._ctx: zmq.Context | None = None
        self._plan: list[_Push] = []

    @property
    def bytes_pushed(self) -> int:
        return sum(t.bytes_pushed for t in self.targets.values())

    def add(self, rid: str, spec: PushSpec, num_tokens: int) -> None:
        """Register a prefill-only request; raises (TransferRefused, ValueError, ...) if it cannot push."""
        bs = self.layout.block_size
        if len(spec.dst_blocks) != -(-num_tokens // bs) or spec.skip_tokens % bs or \
                not 0 <= spec.skip_tokens < num_tokens:
            raise ValueError("reservation does not match the request's tokens")
        target = self._target(spec.kind, spec.addr)
        if any(not 0 <= b < target.num_blocks for b in spec.dst_blocks):
            raise ValueError("reserved block ids outside the peer's KV cache")
        self.outgoing[rid] = Outgoing(spec.tid, target, list(spec.dst_blocks), spec.skip_tokens,
                                      spec.skip_tokens)

    def forget(self, rid: str) -> None:
        self.outgoing.pop(rid, None)
        self.results.pop(rid, None)

    def drop_peer(self, addr: str) -> None:
        """Close the channel to a decode instance that is gone (its requests were forgotten)."""
        target = self.targets.pop(addr, None)
        if target is not None:
            self.worker.call(target.close)

    def _target(self, kind: str, addr: str) -> ShmPushTarget | TcpPushTarget:
        target = self.targets.get(addr)
        if target is None:
            if kind == "shm":
                target = self.worker.call(ShmPushTarget, addr, self.layout)
            elif kind == "tcp":
                if self._ctx is None:
                    self._ctx = zmq.Context()
                target = self.worker.call(TcpPushTarget, self._ctx, addr, self.layout)
            else:
                raise ValueError(f"unknown transfer kind {kind!r}")
            self.targets[addr] = target
        return target

    # ----- engine hooks -----

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        bs = self.layout.block_size
        for req, n in zip(batch.requests, batch.num_tokens, strict=True):
            out = self.outgoing.get(req.request_id)
            if out is None:
                continue
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            # a recompute after preemption starts below sent_tokens: push again from there
            lo = max(out.skip_tokens, min(out.sent_tokens, start))
            b0, b1 = lo // bs, -(-end // bs)
            table = block_tables[req.request_id]
            self._plan.append(_Push(req.request_id, out, table[b0:b1], b0, end, end == req.num_tokens,
                                    out.dst_blocks[b0:b1]))

    def after_layer(self, layer: int) -> None:
        src = self.kv_caches[layer]
        for p in self._plan:
            if p.src_blocks:
                self.worker.submit(p.rid, p.out.target.push_layer, p.out.tid, layer, src,
                                   p.src_blocks, p.dst_blocks, p.first_index)
                p.out.frames += 1

    def end_step(self) -> None:
        if not self._plan:
            return
        for p in self._plan:
            if p.last:
                self.worker.submit(p.rid, p.out.target.finish, p.out.tid, p.out.frames)
        errors = self.worker.flush()
        for p in self._plan:
            p.out.sent_tokens = p.end
            if p.last or p.rid in errors:
                self.outgoing.pop(p.rid, None)
                self.results[p.rid] = errors.get(p.rid)
                if p.rid in errors:
                    self.transfers_failed += 1
                else:
                    self.transfers_ok += 1
        self._plan = []

    def close(self) -> None:
        for target in self.targets.values():
            self.worker.call(target.close)
        self.targets.clear()
        self.worker.close()
        if self._ctx is not None:
            self._ctx.term()
