"""The router's request state machine: dispatch, PD transfers as leases, retries on failure.

Everything here runs on the API process's event loop thread, driven by three inputs: client
calls (`submit`, `abort`), instance messages (`on_message`) and time/process events (`tick`,
`on_instance_dead`). It sends through a callable and reads an injected clock, so it is
independent of sockets and processes: the simulator runs this same class on an event queue.
It sees token ids only; the front end turns them into text.

Per request an *attempt* is one dispatch, named `<rid>#<n>` on the instances; messages about an
older attempt are stale and ignored. A disaggregated attempt goes: reserve on a decode instance
-> prefill on a prefill instance, which pushes KV and samples the first token -> admit on the
decode instance, which runs it to the end. A transfer is a lease: if it fails, or the first token
comes back later than `lease_timeout_s` after the reservation, the decode side's blocks are
released (only once the prefill side acknowledged it stopped writing, or died) and the request
is prefilled again on the decode instance itself. When an instance dies, each of its requests
is dispatched again with the tokens already streamed appended to the prompt, so the client's
stream continues (and with greedy sampling continues exactly).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from banaserve.cluster import messages as m
from banaserve.cluster.config import ClusterConfig
from banaserve.cluster.tracked import RouterCounters, Tracked
from banaserve.engine.outputs import TokenOutput
from banaserve.kv.block_hash import hash_blocks
from banaserve.policies.prefix_index import PrefixIndex
from banaserve.policies.routing import CacheAware, RoundRobin, cache_aware, least_loaded, round_robin
from banaserve.policies.view import ClusterView


class Router:
    def __init__(self, config: ClusterConfig, view: ClusterView, send: Callable[[int, object], None],
                 peers: dict[int, m.Hello], clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.view = view
        self.send = send
        self.peers = peers  # instance id -> its Hello (transfer address, ...)
        self.clock = clock
        self.requests: dict[str, Tracked] = {}
        self.by_aid: dict[str, Tracked] = {}
        self.by_tid: dict[int, Tracked] = {}
        self.cancelling: dict[str, tuple[Tracked, int, int, int, bool]] = {}  # aid -> (t, p, d, tid, redo)
        self.waiting: dict[str, Tracked] = {}  # refused for lack of decode room, asked again by tick
        self.counters = RouterCounters()
        self._rr: dict[str, RoundRobin] = {}  # a cursor per role
        self._tids = itertools.count(1)
        # cache-aware routing's guess of each instance's prefix cache, about as large as the cache
        blocks = max((h.layout.num_blocks for h in peers.values()), default=1)
        self.prefix = PrefixIndex(blocks)
        self.cache_aware = CacheAware()

    # ----- client side -----

    def submit(self, t: Tracked) -> None:
        if t.rid in self.requests:
            raise ValueError(f"request id {t.rid!r} is already in use")
        self.requests[t.rid] = t
        self._dispatch(t)

    def abort(self, rid: str) -> None:
        t = self.requests.get(rid)
        if t is None:
            return
        if t.stage == "prefill":
            self._cancel(t, redispatch=False)
        elif t.stage == "cancel":
            self.cancelling[t.aid] = (*self.cancelling[t.aid][:4], False)
        elif t.stage == "run":
            self.send(t.run_idx, m.Abort(t.aid))
        # stage reserve: the Reserved reply finds the request gone and releases the blocks
        self._finish(t)

    def inflight_transfers(self) -> int:
        return sum(1 for t in self.by_tid.values() if t.stage in ("prefill", "cancel"))

    # ----- dispatch -----

    def _dispatch(self, t: Tracked) -> None:
        """Start a new attempt of `t` (prompt + tokens streamed so far)."""
        self._unload(t)
        self.by_aid.pop(t.aid, None)
        t.attempt += 1
        if t.attempt > self.config.max_attempts:
            return self._fail(t, RuntimeError(f"request {t.rid} failed after {t.attempt - 1} attempts"))
        t.aid = f"{t.rid}#{t.attempt}"
        self.by_aid[t.aid] = t
        self.counters.dispatches += 1
        if self.config.mode == "colocated":
            return self._run_on(t, self._pick(t, "unified"))
        p, d = least_loaded(self.view, "prefill"), least_loaded(self.view, "decode")
        local, t.local = t.local, False
        if d is None or p is None or local or self._push_addr(d) is None:
            return self._run_on(t, d if d is not None else p)
        self._reserve(t, d)

    def _pick(self, t: Tracked, role: str) -> int | None:
        """The instance of `role` to run `t` on, by the configured routing policy (policies/)."""
        routing = self.config.routing
        if routing == "round_robin" and role != "decode":  # decode: by held requests and memory
            return round_robin(self.view, self._rr.setdefault(role, RoundRobin()), role)
        if routing != "cache_aware":
            return least_loaded(self.view, role)  # least_loaded and load_aware are one rule
        hello = next(iter(self.peers.values()))
        keys = hash_blocks(b"router", t.prompt + t.generated, hello.layout.block_size)
        ids = [s.instance_id for s in self.view.alive(role)]
        pick = cache_aware(self.view, self.prefix.matches(ids, keys), len(keys), self.cache_aware, role)
        if pick is not None:
            self.prefix.record(pick, keys)
        return pick

    def _run_on(self, t: Tracked, idx: int | None) -> None:
        if idx is None:
            return self._fail(t, RuntimeError("no live instance left to serve the request"))
        t.stage, t.run_idx = "run", idx
        self._load(t, idx, len(t.prompt) + len(t.generated))
        self.send(idx, m.Add(t.aid, t.prompt, t.params, list(t.generated)))

    def _reserve(self, t: Tracked, d: int) -> None:
        tid = next(self._tids)
        t.stage, t.tid, t.d_idx, t.p_idx = "reserve", tid, d, None
        t.deadline = self.clock() + self.config.lease_timeout_s
        self.by_tid[tid] = t
        self._load(t, d, 0)
        self.send(d, m.Reserve(tid, t.aid, t.prompt + t.generated, self.config.transfer))

    def _push_addr(self, d: int) -> str | None:
        """Where prefill instances push into decode instance `d` over the configured channel."""
        hello = self.peers[d]
        return hello.shm_addr if self.config.transfer == "shm" else hello.tcp_addr

    def _cancel(self, t: Tracked, redispatch: bool) -> None:
        """Stop the prefill side; its blocks on the decode side are released when it acknowledges."""
        self.cancelling[t.aid] = (t, t.p_idx, t.d_idx, t.tid, redispatch)
        t.stage = "cancel"
        self.send(t.p_idx, m.Abort(t.aid, ack=True))

    def _release(self, t: Tracked) -> None:
        """Give the decode side's reservation back (the prefill side no longer writes)."""
        self.by_tid.pop(t.tid, None)
        if self.view.get(t.d_idx).alive:
            self.send(t.d_idx, m.Release(t.tid))

    # ----- instance messages -----

    def on_message(self, idx: int, msg) -> None:
        handler = getattr(self, "_on_" + type(msg).__name__.lower(), None)
        if handler is not None:
            handler(idx, msg)

    def _on_reserved(self, idx: int, r: m.Reserved) -> None:
        t = self.by_tid.get(r.tid)
        if t is None or t.stage != "reserve" or t.d_idx != idx:
            self.by_tid.pop(r.tid, None)
            if r.ok:
                self.send(idx, m.Release(r.tid))
            return
        if not r.ok:
            self.by_tid.pop(r.tid, None)
            self._unload(t)
            self.counters.reserve_refusals += 1
            t.stage, t.retry_at = "wait", self.clock() + self.config.reserve_retry_s
            self.waiting[t.rid] = t
            return
        p = self._pick(t, "prefill")
        if p is None:
            self._release(t)
            t.local = True
            return self._dispatch(t)
        t.stage, t.p_idx = "prefill", p
        self._load(t, p, len(t.prompt) + len(t.generated))
        self.counters.transfers_started += 1
        push = m.PushSpec(r.tid, self.config.transfer, self._push_addr(idx), r.blocks, r.skip_tokens)
        self.send(p, m.Add(t.aid, t.prompt, t.params, list(t.generated), push))

    def _on_prefilldone(self, idx: int, r: m.PrefillDone) -> None:
        t = self.by_aid.get(r.rid)
        if t is None or t.stage != "prefill" or t.tid != r.tid or t.p_idx != idx:
            return
        self._unload(t, idx)
        in_time = self.clock() <= t.deadline
        if r.out is not None:
            self._emit(t, r.out)
            if t.stage == "done":  # the first token already ended the request
                return self._release(t)
        if r.ok and in_time:
            self.counters.transfers_ok += 1
            self.by_tid.pop(t.tid, None)
            t.stage, t.run_idx = "run", t.d_idx
            self.send(t.d_idx, m.Admit(t.tid, t.aid, t.prompt, t.params, list(t.generated)))
            return
        if r.ok:
            self.counters.lease_timeouts += 1
        else:
            self.counters.transfers_failed += 1
        self._release(t)
        t.local = True
        self._dispatch(t)

    def _on_aborted(self, idx: int, r: m.Aborted) -> None:
        entry = self.cancelling.get(r.rid)
        if entry is None or entry[1] != idx:
            return
        del self.cancelling[r.rid]
        t, _, d, tid, redispatch = entry
        self.by_tid.pop(tid, None)
        if self.view.get(d).alive:
            self.send(d, m.Release(tid))
        if redispatch and t.stage == "cancel":
            t.local = True
            self._dispatch(t)

    def _on_admitfailed(self, idx: int, r: m.AdmitFailed) -> None:
        t = self.by_aid.get(r.rid)
        if t is None or t.stage != "run" or t.run_idx != idx:
            return
        self.counters.transfers_failed += 1
        t.local = True
        self._dispatch(t)

    def _on_outputs(self, idx: int, r: m.Outputs) -> None:
        for o in r.items:
            t = self.by_aid.get(o.request_id)
            if t is None or t.stage != "run" or t.run_idx != idx:
                continue
            if t.load.get(idx, [0, 0])[1]:
                self._load(t, idx, -t.load[idx][1], requests=0)  # its prefill is done
            self._emit(t, o)

    def _on_failed(self, idx: int, r: m.Failed) -> None:
        t = self.by_aid.get(r.rid)
        if t is None or t.stage not in ("run", "prefill"):
            return
        if t.stage == "prefill":
            self._release(t)
        self._fail(t, ValueError(r.error))

    # ----- time and process events -----

    def tick(self) -> None:
        """Expire leases and ask again for room that was refused."""
        now = self.clock()
        for t in list(self.by_tid.values()):
            if t.stage == "prefill" and now > t.deadline:
                self.counters.lease_timeouts += 1
                self._cancel(t, redispatch=True)
        for t in [t for t in self.waiting.values() if now >= t.retry_at]:
            del self.waiting[t.rid]
            d = least_loaded(self.view, "decode")
            if d is None:
                self._dispatch(t)
            else:
                self._reserve(t, d)

    def next_tick_at(self) -> float | None:
        """When `tick` next has work (a refused reservation to ask again, a lease to expire)."""
        times = [t.retry_at for t in self.waiting.values()]
        times += [t.deadline for t in self.by_tid.values() if t.stage == "prefill"]
        return min(times, default=None)

    def on_instance_dead(self, idx: int) -> None:
        self.prefix.forget(idx)
        s = self.view.get(idx)
        s.alive, s.inflight_requests, s.inflight_prefill_tokens = False, 0, 0
        for aid, (t, p, d, tid, redispatch) in list(self.cancelling.items()):
            if idx in (p, d):
                del self.cancelling[aid]
                self.by_tid.pop(tid, None)
                if idx == p and self.view.get(d).alive:
                    self.send(d, m.Release(tid))  # the writer is dead: nothing lands there any more
                if redispatch and t.stage == "cancel":
                    self.counters.retries += 1
                    self._dispatch(t)
        for t in list(self.requests.values()):
            if t.stage == "prefill" and idx in (t.p_idx, t.d_idx):
                if idx == t.p_idx:
                    self._release(t)
                else:
                    self.by_tid.pop(t.tid, None)
                    self.send(t.p_idx, m.Abort(t.aid))
            elif t.stage == "reserve" and idx == t.d_idx:
                self.by_tid.pop(t.tid, None)
            elif not (t.stage == "run" and t.run_idx == idx):
                continue
            t.load.pop(idx, None)
            self.counters.retries += 1
            self._dispatch(t)

    # ----- outputs and bookkeeping -----

    def _emit(self, t: Tracked, o: TokenOutput) -> None:
        t.generated.extend(o.new_token_ids)
        if t.num_cached_tokens is None:
            t.num_cached_tokens = o.num_cached_tokens
        t.sink(TokenOutput(t.rid, list(o.new_token_ids), o.finished, o.finish_reason, t.num_cached_tokens or 0,
                           o.num_preemptions))
        if o.finished:
            self._finish(t)

    def _fail(self, t: Tracked, exc: Exception) -> None:
        self.counters.failed_requests += 1
        t.sink(exc)
        self._finish(t)

    def _finish(self, t: Tracked) -> None:
        self._unload(t)
        self.waiting.pop(t.rid, None)
        t.stage = "done"
        self.by_aid.pop(t.aid, None)
        self.requests.pop(t.rid, None)

    def _load(self, t: Tracked, idx: int, tokens: int, requests: int = 1) -> None:
        s = self.view.get(idx)
        entry = t.load.setdefault(idx, [0, 0])
        entry[0] += requests
        entry[1] += tokens
        s.inflight_requests += requests
        s.inflight_prefill_tokens += tokens

    def _unload(self, t: Tracked, idx: int | None = None) -> None:
        for i in ([idx] if idx is not None else list(t.load)):
            reqs, tokens = t.load.pop(i, (0, 0))
            s = self.view.get(i)
            s.inflight_requests -= reqs
            s.inflight_prefill_tokens -= tokens
