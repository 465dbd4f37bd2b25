"""The prefill side's KV connector in the simulator: pushes go over a simulated Link.

It is the live PushConnector (cluster/pd_connector.py) with the bytes replaced by their time:
each step's newly completed KV of every transfer request (beyond what the decode side already
holds) is pushed layer by layer during the step, and the step ends only once its pushes are done,
as PushConnector.end_step waits for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from banaserve.cluster.messages import PushSpec
from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.scheduler import ScheduledBatch
from banaserve.sim.links import Link


@dataclass(slots=True)
class Outgoing:
    tid: int
    sent_tokens: int  # KV of tokens [0, sent_tokens) is at the peer (its prefix hit counts)


class SimPusher(KVConnector):
    def __init__(self, link: Link, kv_bytes_per_token: int, num_layers: int):
        self.link = link
        self.kv_bytes_per_token = kv_bytes_per_token
        self.num_layers = num_layers
        self.outgoing: dict[str, Outgoing] = {}
        self.results: dict[str, str | None] = {}
        self.transfers_ok = 0
        self.transfers_failed = 0
        self._step_tokens = 0
        self._finishing: list[str] = []

    @property
    def bytes_pushed(self) -> int:
        return self.link.bytes_sent

    # ----- the Pusher side (InstanceHandler) -----

    def add(self, rid: str, spec: PushSpec, num_tokens: int) -> None:
        self.outgoing[rid] = Outgoing(spec.tid, spec.skip_tokens)

    def forget(self, rid: str) -> None:
        self.outgoing.pop(rid, None)
        self.results.pop(rid, None)

    def drop_peer(self, addr: str) -> None:
        pass

    # ----- engine hooks -----

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        tokens = 0
        for req, n in zip(batch.requests, batch.num_tokens, strict=True):
            out = self.outgoing.get(req.request_id)
            if out is None:
                continue
            end = req.num_computed_tokens + n  # num_computed_tokens is still the chunk's start
            if end > out.sent_tokens:
                tokens += end - out.sent_tokens
                out.sent_tokens = end
            if end == req.num_tokens:
                self._finishing.append(req.request_id)
        self._step_tokens = tokens

    def end_step(self) -> None:
        for rid in self._finishing:
            if self.outgoing.pop(rid, None) is not None:
                self.results[rid] = None
                self.transfers_ok += 1
        self._finishing = []

    def push(self, start: float, compute_end: float) -> float:
        """When the step that computed from `start` to `compute_end` ends: once its KV is across."""
        tokens, self._step_tokens = self._step_tokens, 0
        if not tokens:
            return compute_end
        arrive = self.link.push_layerwise(start, compute_end, tokens * self.kv_bytes_per_token, self.num_layers)
        return max(compute_end, arrive)
