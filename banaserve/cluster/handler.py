"""An instance's control logic: the router's messages in, token outputs and replies out.

The same object runs inside an instance process (cluster/instance.py, messages over ZeroMQ,
steps on a forward pass) and inside the simulator (sim/instance.py, messages on an event queue,
steps on a cost model). It handles requests to run or to prefill only (pushing their KV to a
decode instance's reservation), reservations and admissions (decode_side.py), aborts and stats
requests, and turns each step's token outputs into Outputs / PrefillDone messages. Everything
transport-specific (sockets, shared memory, links) comes in through `send`, the push connector
and the decode side's receiver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from banaserve.cluster import messages as m
from banaserve.cluster.decode_side import DecodeSide
from banaserve.cluster.stats import LoadMeter
from banaserve.engine.core import EngineCore
from banaserve.engine.outputs import TokenOutput
from banaserve.policies.view import InstanceStats
from banaserve.transfer.layout import TransferRefused


class Pusher(Protocol):
    """The prefill side's KV connector (cluster/pd_connector.py live, sim/links.py simulated)."""

    results: dict[str, str | None]  # rid -> None (pushed) or an error, once its transfer ended
    bytes_pushed: int
    transfers_ok: int
    transfers_failed: int

    def add(self, rid: str, spec: m.PushSpec, num_tokens: int) -> None: ...

    def forget(self, rid: str) -> None: ...

    def drop_peer(self, addr: str) -> None: ...


@dataclasses.dataclass(slots=True)
class PrefillOnly:
    """A request this instance only prefills: what the client really asked for."""

    tid: int
    max_tokens: int
    num_history: int
    num_tokens: int  # prompt + history + the token sampled here


class InstanceHandler:
    def __init__(self, instance_id: int, role: str, pid: int, core: EngineCore, send: Callable[[object], None],
                 decode: DecodeSide, pusher: Pusher | None, meter: LoadMeter):
        self.instance_id, self.role, self.pid = instance_id, role, pid
        self.core = core
        self.send = send
        self.decode = decode
        self.pusher = pusher
        self.meter = meter
        self.prefill_only: dict[str, PrefillOnly] = {}
        self.stopping = False
        self.store = None  # a StoreConnector, whose counters the stats report

    def handle(self, msg) -> None:
        if isinstance(msg, m.Add):
            self._add(msg)
        elif isinstance(msg, m.Reserve):
            self.send(self.decode.reserve(msg))
        elif isinstance(msg, m.Admit):
            failure = self.decode.admit(msg)
            if failure is not None:
                self.send(failure)
        elif isinstance(msg, m.Release):
            self.decode.release(msg.tid)
        elif isinstance(msg, m.Abort):
            self.core.abort(msg.rid)
            self.decode.abort(msg.rid)
            self.prefill_only.pop(msg.rid, None)
            if self.pusher is not None:
                self.pusher.forget(msg.rid)
            if msg.ack:
                self.send(m.Aborted(msg.rid))
        elif isinstance(msg, m.GetStats):
            self.send(m.Stats(self.snapshot()))
        elif isinstance(msg, m.DropPeer):
            if self.pusher is not None:
                self.pusher.drop_peer(msg.addr)
        elif isinstance(msg, m.Shutdown):
            self.stopping = True

    def poll(self) -> None:
        """Between steps: admit TCP transfers whose last frames arrived, fail overdue ones."""
        for failure in self.decode.poll():
            self.send(failure)

    def step(self) -> None:
        """One engine step, its outputs sent."""
        self.emit(self.core.step())

    def _add(self, a: m.Add) -> None:
        n = len(a.prompt) + len(a.history)
        params = a.params
        if a.push is not None:
            params = dataclasses.replace(params, max_tokens=len(a.history) + 1)  # one new token here
            try:
                if self.pusher is None:
                    raise TransferRefused("this instance does not push KV")
                if n >= self.core.max_model_len:
                    raise ValueError("request does not fit the model's context")
                self.pusher.add(a.rid, a.push, n)
            except (TransferRefused, ValueError, OSError, TimeoutError) as exc:
                self.send(m.PrefillDone(a.rid, a.push.tid, False, f"{type(exc).__name__}: {exc}"))
                return
            self.prefill_only[a.rid] = PrefillOnly(a.push.tid, a.params.max_tokens, len(a.history), n + 1)
        try:
            self.core.add(a.rid, a.prompt, params, a.history)
        except ValueError as exc:
            self.prefill_only.pop(a.rid, None)
            if self.pusher is not None:
                self.pusher.forget(a.rid)
            self.send(m.Failed(a.rid, str(exc)))

    def emit(self, outs: list[TokenOutput]) -> None:
        items = []
        for o in outs:
            po = self.prefill_only.pop(o.request_id, None)
            if po is None:
                items.append(o)
            else:
                self.send(self._prefill_done(o, po))
        if items:
            self.send(m.Outputs(items))

    def _prefill_done(self, o: TokenOutput, po: PrefillOnly) -> m.PrefillDone:
        """Report the token sampled here, finished only if the client's request really ends with it."""
        error = self.pusher.results.pop(o.request_id, "transfer did not complete")
        truly = (o.finish_reason == "stop" or po.num_history + 1 >= po.max_tokens
                 or po.num_tokens >= self.core.max_model_len)
        out = TokenOutput(o.request_id, o.new_token_ids, truly, o.finish_reason if truly else None,
                          o.num_cached_tokens, o.num_preemptions)
        return m.PrefillDone(o.request_id, po.tid, error is None, error or "", out)

    def snapshot(self) -> InstanceStats:
        s, blocks = self.core.scheduler, self.core.blocks
        queued = sum(r.num_tokens - r.num_computed_tokens for r in s.waiting)
        queued += sum(r.num_tokens - r.num_computed_tokens for r in s.running)
        p = self.pusher
        return InstanceStats(
            instance_id=self.instance_id, role=self.role, pid=self.pid,
            num_waiting=len(s.waiting), num_running=len(s.running), num_reserved=self.decode.num_reserved,
            tokens_queued=queued, kv_blocks_used=blocks.num_used_blocks, kv_blocks_total=blocks.pool.num_blocks,
            kv_blocks_cached_free=blocks.pool.num_cached_free, step_time_ms=self.meter.step_time_ms,
            busy_fraction=self.meter.busy_fraction(), num_steps=self.meter.num_steps,
            num_preemptions=s.num_preemptions, bytes_pushed=p.bytes_pushed if p else 0,
            bytes_received=self.decode.bytes_received,
            transfers_ok=p.transfers_ok if p else 0, transfers_failed=p.transfers_failed if p else 0,
            prompt_tokens=s.prompt_tokens, prefix_hit_tokens=s.prefix_hit_tokens, **self._store_stats())

    def _store_stats(self) -> dict:
        c = self.store.counters if self.store is not None else None
        if c is None:
            return {}
        return {"kv_store_hit_tokens": c.hit_tokens, "kv_store_loaded_bytes": c.loaded_bytes,
                "kv_store_saved_bytes": c.saved_bytes, "kv_store_failed_loads": c.failed_loads,
                "kv_store_load_s": c.load_s, "kv_store_load_wait_s": c.load_wait_s}
