"""Decode side of PD disaggregation: KV reservations for incoming transfers, admission once pushed.

A reservation holds blocks under the request's id in the engine's BlockManager (prefix-cache
hits included, so the prefill side skips what is already here). It ends in one of two ways:
`admit` turns it into a running request whose first `len(token_ids)` tokens are computed, or
`release` frees it. The router releases only after the writer stopped (acked abort) or died, so
blocks are never reused while a push might still land in them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from banaserve.cluster.messages import Admit, AdmitFailed, Reserve, Reserved
from banaserve.engine.core import EngineCore


class Receiver(Protocol):
    """Where transfers that are not written in place arrive (TCP live, a link in the simulator)."""

    bytes_received: int

    def expect(self, tid: int, blocks: list[int], skip_blocks: int) -> None: ...

    def status(self, tid: int) -> tuple[bool, str | None]:
        """(every frame arrived, error or None)."""

    def forget(self, tid: int) -> None: ...


@dataclass(slots=True)
class Reservation:
    tid: int
    rid: str
    token_ids: list[int]  # tokens whose KV the transfer brings (prompt + earlier output)
    blocks: list[int]
    skip_tokens: int
    tcp: bool  # arrives through the receiver (wait for it) rather than written in place


@dataclass(slots=True)
class PendingAdmit:
    msg: Admit
    deadline: float


class DecodeSide:
    """Reservations of one instance; `receiver` takes the TCP ones (shm ones are written directly)."""

    def __init__(self, core: EngineCore, receiver: Receiver | None, admit_wait_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.core = core
        self.receiver = receiver
        self.admit_wait_s = admit_wait_s
        self.clock = clock
        self.reservations: dict[int, Reservation] = {}
        self.pending: dict[int, PendingAdmit] = {}

    @property
    def num_reserved(self) -> int:
        return len(self.reservations)

    @property
    def bytes_received(self) -> int:
        return self.receiver.bytes_received if self.receiver is not None else 0

    def reserve(self, m: Reserve) -> Reserved:
        """Hold blocks for `m.token_ids`; not ok when short of room (the router retries later)."""
        e, blocks = self.core, self.core.blocks
        n = len(m.token_ids)
        tcp = m.kind == "tcp"
        if (m.tid in self.reservations or m.rid in e.requests or m.rid in blocks.block_tables
                or not 0 < n < e.max_model_len or (tcp and self.receiver is None)):
            return Reserved(m.tid, False)
        cached, keys = blocks.find_cached_prefix(m.token_ids)
        need = blocks.blocks_for(n) - len(cached)
        # keep a block of headroom per running request so decodes are not preempted by reservations
        headroom = len(e.scheduler.running)
        if blocks.num_free_blocks - need < headroom or not blocks.allocate(m.rid, n, cached, keys):
            return Reserved(m.tid, False)
        table = list(blocks.block_tables[m.rid])
        r = Reservation(m.tid, m.rid, list(m.token_ids), table, len(cached) * blocks.block_size, tcp)
        self.reservations[m.tid] = r
        if tcp:
            self.receiver.expect(m.tid, table, len(cached))
        return Reserved(m.tid, True, table, r.skip_tokens)

    def release(self, tid: int) -> None:
        self.pending.pop(tid, None)
        r = self.reservations.pop(tid, None)
        if r is None:
            return
        if r.tcp:
            self.receiver.forget(tid)  # after this no late frame can write the blocks
        self.core.blocks.free(r.rid)

    def abort(self, rid: str) -> None:
        """The request is gone: drop its reservation, if any."""
        for tid in [t for t, r in self.reservations.items() if r.rid == rid]:
            self.release(tid)

    def admit(self, m: Admit) -> AdmitFailed | None:
        """Start the request from its pushed KV (or wait for the last TCP frames); failure frees it."""
        r = self.reservations.get(m.tid)
        if r is None or r.rid != m.rid:
            return AdmitFailed(m.tid, m.rid, "no such reservation")
        if not m.history or m.prompt + m.history[:-1] != r.token_ids:
            self.release(m.tid)
            return AdmitFailed(m.tid, m.rid, "admitted tokens differ from the reserved ones")
        if r.tcp:
            self.pending[m.tid] = PendingAdmit(m, self.clock() + self.admit_wait_s)
            return self._try_pending(m.tid)
        return self._start(r, m)

    def poll(self) -> list[AdmitFailed]:
        """Admit pending requests whose frames all arrived; fail those whose wait ran out."""
        return [f for tid in list(self.pending) if (f := self._try_pending(tid)) is not None]

    def _try_pending(self, tid: int) -> AdmitFailed | None:
        p = self.pending[tid]
        complete, error = self.receiver.status(tid)
        if complete:
            del self.pending[tid]
            return self._start(self.reservations[tid], p.msg)
        if error is not None or self.clock() > p.deadline:
            self.release(tid)
            return AdmitFailed(tid, p.msg.rid, error or "transfer did not complete in time")
        return None

    def _start(self, r: Reservation, m: Admit) -> AdmitFailed | None:
        del self.reservations[r.tid]
        if r.tcp:
            self.receiver.forget(r.tid)
        try:
            self.core.add(m.rid, m.prompt, m.params, m.history, num_computed_tokens=len(r.token_ids))
        except ValueError as exc:
            self.core.blocks.free(r.rid)
            return AdmitFailed(r.tid, m.rid, str(exc))
        return None
