"""Continuous batching by "tokens to compute" under a token budget (after vLLM v1).

Every step maps request -> number of tokens to run. A prefill chunk and a decode token are
the same thing here, so mixed batches are normal. Running requests go first (oldest first);
when one cannot get blocks, the newest running request is preempted (its KV freed, to be
recomputed later). Waiting requests are admitted FCFS with prefix-cache hits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.request import Request, RequestStatus
from banaserve.kv.block_manager import BlockManager


@dataclass(slots=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work: `requests[i]` runs `num_tokens[i]` tokens; multi-token chunks come first."""

    requests: list[Request] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    def __len__(self) -> int:
        return len(self.requests)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.prompt_tokens = 0  # admitted for the first time, and of those found cached or loaded
        self.prefix_hit_tokens = 0
        self.connector: KVConnector | None = None  # loads KV from elsewhere, may keep finished blocks

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def add_running(self, req: Request) -> None:
        """Admit a request whose KV is already in its blocks (computed elsewhere): it runs next step."""
        self.running.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.config.enable_chunked_prefill and n < req.num_tokens - req.num_computed_tokens:
                break
            while not self.blocks.allocate(req.request_id, req.num_computed_tokens + n):
                victim = self.running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                break
            scheduled.append((req, n))
            budget -= n
            i += 1
        skipped: list[Request] = []  # waiting for a connector's answer: they keep their place
        while (self.waiting and budget > 0 and not batch.preempted
               and len(self.running) < self.config.max_num_seqs):
            req = self.waiting[0]
            cached, keys = self.blocks.find_cached_prefix(req.all_token_ids)
            num_cached = len(cached) * self.blocks.block_size
            loadable = self._loadable(req, num_cached)
            if loadable is None:
                skipped.append(self.waiting.popleft())
                continue
            remaining = req.num_tokens - num_cached - loadable
            n = min(remaining, budget)
            if not self.config.enable_chunked_prefill and n < remaining:
                break
            if not self.blocks.allocate(req.request_id, num_cached + loadable + n, cached, keys):
                break
            self.waiting.popleft()
            if loadable:
                bs = self.blocks.block_size
                table = self.blocks.block_tables[req.request_id]
                self.connector.load_planned(req, table[num_cached // bs:(num_cached + loadable) // bs],
                                            num_cached, loadable)
            if req.num_preemptions == 0:
                req.num_cached_tokens = num_cached + loadable
                self.prompt_tokens += req.num_tokens
                self.prefix_hit_tokens += num_cached + loadable
            req.num_computed_tokens = num_cached + loadable
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            scheduled.append((req, n))
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        # the model runner wants multi-token chunks first, then a batch of single-token decodes
        scheduled.sort(key=lambda rn: rn[1] == 1)
        batch.requests = [r for r, _ in scheduled]
        batch.num_tokens = [n for _, n in scheduled]
        return batch

    def _preempt(self, req: Request) -> None:
        self.blocks.free(req.request_id)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _loadable(self, req: Request, num_cached: int) -> int | None:
        """Tokens after the local hit the connector can load: whole blocks, never the last token."""
        if self.connector is None:
            return 0
        n = self.connector.num_loadable_tokens(req, num_cached)
        if n is None:
            return None
        bs = self.blocks.block_size
        most = (req.num_tokens - 1) // bs * bs - num_cached
        return max(0, min(n // bs * bs, most))

    def recompute(self, reqs: list[Request]) -> None:
        """Requests whose KV loads failed mid-step: free their blocks (none of them was published,
        the step is not committed for them) and queue them first, to run from the start."""
        for req in reqs:
            if req.status is RequestStatus.RUNNING:
                self.running.remove(req)
                self._preempt(req)
                req.num_preemptions -= 1  # not a preemption: do not count it as one
                self.num_preemptions -= 1

    def commit(self, batch: ScheduledBatch, skip: set[str] | frozenset[str] = frozenset()) -> None:
        """Account the step's computed tokens and publish newly full blocks to the prefix cache."""
        for req, n in zip(batch.requests, batch.num_tokens):
            if req.request_id in skip:
                continue
            req.num_computed_tokens += n
            self.blocks.cache_computed(req.request_id, req.all_token_ids, req.num_computed_tokens)

    def finish(self, req: Request, reason: str) -> None:
        """Finish (or abort) a request wherever it is and free its blocks."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        if self.connector is None or not self.connector.request_finished(req):
            self.blocks.free(req.request_id)
