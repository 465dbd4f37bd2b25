"""The live router's prefill/decode flow (cluster/router.py, docs/cluster.md) on simulated instances.

1. Reserve: the router picks the least-loaded decode instance, which holds blocks for the prompt
   (taking its own prefix hit) when it next handles messages: at once if idle, else when its
   running step ends. If it has no room the request waits and is retried every
   `reserve_retry_s`.
2. Prefill: the least-loaded prefill instance runs the prompt with max_tokens 1; every step
   pushes the KV it completed (beyond what the decode side already has) layer by layer over the
   instance's link, and the step ends only when its pushes are done (as PushConnector.end_step).
3. The first token streams at the prefill step's end (TTFT); the decode instance then admits the
   request as running in its reserved blocks and decodes the rest. A request whose first token
   is its last releases the reservation instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from banaserve.engine.request import Request
from banaserve.engine.sampling_params import SamplingParams
from banaserve.sim.instance import SimInstance
from banaserve.sim.links import Link


@dataclass(slots=True)
class Transfer:
    """One request between reservation and admission."""

    request: Request  # the request as the client sent it (max_tokens = its output length)
    decode: SimInstance
    sent_tokens: int  # KV of tokens [0, sent_tokens) is on the decode side
    first_token: int = 0


class PDFlow:
    """Disaggregated routing and KV movement. The simulator forwards its events here."""

    def __init__(self, prefill: list[SimInstance], decode: list[SimInstance], links: dict[int, Link],
                 route_prefill: Callable, route_decode: Callable, kv_bytes_per_token: int, num_layers: int,
                 reserve_retry_s: float, kick: Callable[[SimInstance], None],
                 schedule: Callable[[float, object], None]):
        self.prefill, self.decode, self.links = prefill, decode, links
        self.route_prefill, self.route_decode = route_prefill, route_decode
        self.kv_bytes_per_token, self.num_layers = kv_bytes_per_token, num_layers
        self.reserve_retry_s = reserve_retry_s
        self.kick, self.schedule = kick, schedule  # schedule(time, payload): a PD event at `time`
        self.transfers: dict[str, Transfer] = {}
        self.waiting: deque[Request] = deque()  # refused, retried on a timer
        self.retrying = False  # a reservation of the oldest waiting request is on its way
        self.tick_pending = False
        self.decode_changed = False  # since the last retry tick
        self.kv_at: dict[int, float] = {}  # prefill instance id -> when its running step's KV is across
        self.num_refusals = 0

    # ----- reservation -----

    def arrive(self, req: Request) -> None:
        if self.waiting:  # FIFO behind earlier refusals
            self.waiting.append(req)
        else:
            self._send_reserve(req, False)

    def _send_reserve(self, req: Request, retried: bool) -> None:
        d = self.route_decode(self.decode)
        d.reserve_queue.append((req, retried))
        self.kick(d)  # handled when d is next between steps (now, if it is idle)

    def decode_boundary(self, d: SimInstance, now: float) -> None:
        """`d` is between steps: it answers the reservations sent to it, in order."""
        queue = d.reserve_queue
        while queue:
            req, retried = queue.popleft()
            skip = d.reserve(req.request_id, req.prompt_token_ids)
            if skip is None:
                self.num_refusals += 1
                if retried:
                    self.retrying = False
                    self.waiting.appendleft(req)
                else:
                    self.waiting.append(req)
                self._arm_tick(now)
                continue
            self.transfers[req.request_id] = Transfer(req, d, skip)
            p = self.route_prefill(self.prefill)
            p.add(Request(req.request_id, req.prompt_token_ids, SamplingParams(max_tokens=1, ignore_eos=True),
                          arrival_time=req.arrival_time))
            self.kick(p)
            if retried:  # granted: the next oldest asks at once
                if self.waiting:
                    self._send_reserve(self.waiting.popleft(), True)
                else:
                    self.retrying = False

    def _arm_tick(self, now: float) -> None:
        if not self.tick_pending:
            self.tick_pending = True
            self.schedule(now + self.reserve_retry_s, None)

    def tick(self, now: float) -> None:
        """Ask again for room for the oldest waiting request if the decode side changed since the
        last tick (else the answer would still be no); each grant lets the next oldest ask.

        The live router re-sends every waiting request each tick; one at a time (FIFO) keeps a long
        wait queue cheap and only matters while decode memory is short.
        """
        self.tick_pending = False
        if self.waiting and not self.retrying and self.decode_changed:
            self.decode_changed = False
            self.retrying = True
            self._send_reserve(self.waiting.popleft(), True)
        if self.waiting:
            self._arm_tick(now)

    # ----- prefill side -----

    def push(self, p: SimInstance, start: float, compute_end: float) -> float:
        """Push the KV of the step just scheduled on `p`; returns when the step ends (pushes done)."""
        batch = p.batch
        assert batch is not None
        tokens = 0
        for req, n in zip(batch.requests, batch.num_tokens, strict=True):
            t = self.transfers.get(req.request_id)
            if t is None:
                continue
            end = req.num_computed_tokens + n  # num_computed_tokens is still the chunk's start
            if end > t.sent_tokens:
                tokens += end - t.sent_tokens
                t.sent_tokens = end
        if not tokens:
            self.kv_at[p.id] = compute_end
            return compute_end
        link = self.links[p.id]
        self.kv_at[p.id] = link.push_layerwise(start, compute_end, tokens * self.kv_bytes_per_token,
                                               self.num_layers)
        return max(compute_end, link.free_at)

    def prefilled(self, p: SimInstance, req: Request, now: float) -> bool:
        """`req` computed its prompt on `p`: its first token is out. True when that ends the request."""
        p.append_token(req)  # max_tokens 1 on the prefill side: finishes and frees p's blocks
        self.kick(p)
        t = self.transfers[req.request_id]
        t.first_token = req.all_token_ids[-1]
        if t.request.params.max_tokens == 1:
            del self.transfers[req.request_id]
            t.decode.release(req.request_id)
            self.decode_changed = True
            return True
        self.schedule(max(now, self.kv_at[p.id]), req.request_id)
        return False

    # ----- decode side -----

    def admit(self, request_id: str) -> None:
        """The request's KV is on its decode instance: run it there."""
        t = self.transfers.pop(request_id)
        r = t.request
        t.decode.admit(request_id, r.prompt_token_ids, t.first_token, r.params.max_tokens)
        self.decode_changed = True
        self.kick(t.decode)
