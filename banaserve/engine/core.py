"""The engine core: requests in token ids, one scheduler step at a time, token ids out.

It owns the scheduler, the block manager and the requests; the model runner is injected, so the
live engine (a forward pass) and the simulator (a cost model) run this same code. Text, stop
strings and detokenization belong to the front end (output_processor.py, as vLLM v1's output
processor), so everything that crosses a process boundary carries token ids only.

A step is `schedule()`, then the runner's `execute`, then `complete()`; `step()` does all three
back to back. The simulator calls the halves itself, with simulated time between them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from banaserve.engine.kv_connector import KVConnector
from banaserve.engine.outputs import TokenOutput
from banaserve.engine.request import Request, RequestStatus
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.scheduler import ScheduledBatch, Scheduler
from banaserve.kv.block_manager import BlockManager


class Runner(Protocol):
    def execute(self, batch: ScheduledBatch, block_tables: dict[str, list[int]],
                before_layer: Callable[[int], None] | None = None,
                after_layer: Callable[[int], None] | None = None) -> dict[str, int]:
        """Run one step; the sampled token of every request whose last token was computed."""


class EngineCore:
    """add / abort / step over token ids. `make_request` builds Requests (the live engine adds
    a seeded generator); the stop rule (EOS, stop token ids, max_tokens, context) lives here."""

    def __init__(self, scheduler: Scheduler, blocks: BlockManager, runner: Runner, max_model_len: int,
                 eos_token_ids: Collection[int] = (), vocab_size: int | None = None):
        self.scheduler = scheduler
        self.blocks = blocks
        self.runner = runner
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.vocab_size = vocab_size
        self.requests: dict[str, Request] = {}
        self.connector: KVConnector | None = None
        self.make_request: Callable[[str, list[int], SamplingParams], Request] = Request

    def set_kv_connector(self, connector: KVConnector | None) -> None:
        self.connector = connector
        self.scheduler.connector = connector

    # ----- requests -----

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        if num_prompt_tokens >= self.max_model_len:
            raise ValueError(f"prompt has {num_prompt_tokens} tokens but the model's context is "
                             f"{self.max_model_len} tokens (at least one must be left for output)")
        worst = min(num_prompt_tokens + max_tokens, self.max_model_len)
        total = self.blocks.pool.num_blocks
        if self.blocks.blocks_for(worst) > total:
            raise ValueError(f"request needs up to {worst} tokens of KV memory but this engine holds "
                             f"{total * self.blocks.block_size}")

    def check_token_ids(self, token_ids: list[int], what: str = "prompt") -> None:
        vocab = self.vocab_size
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 or (vocab is not None and t >= vocab)
               for t in token_ids):
            raise ValueError(f"{what} token ids must be integers in [0, {vocab})")

    def add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
            history: list[int] = (), num_computed_tokens: int = 0) -> Request:
        """Queue a request; raise ValueError on anything it could never be served with.

        `history` is output the request already produced elsewhere (a re-dispatch, or the first
        token a prefill instance sampled): max_tokens counts it and outputs continue after it.
        With `num_computed_tokens` > 0 the KV of that many tokens is already in the blocks held
        under `request_id` (reserved by a KV mover) and the request runs at once, as a decode.
        """
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not prompt_token_ids:
            raise ValueError("prompt is empty")
        self.check_token_ids(prompt_token_ids)
        self.check_token_ids(list(history), "history")
        self.check_fits(len(prompt_token_ids), params.max_tokens)
        req = self.make_request(request_id, list(prompt_token_ids), params)
        req.all_token_ids.extend(history)
        if req.num_tokens >= self.max_model_len:
            raise ValueError(f"request has {req.num_tokens} tokens but the model's context is {self.max_model_len}")
        if num_computed_tokens:
            table = self.blocks.block_tables.get(request_id)
            if not 0 < num_computed_tokens < req.num_tokens or table is None or \
                    len(table) < self.blocks.blocks_for(num_computed_tokens):
                raise ValueError("remote-prefilled request has no reserved blocks for its KV")
            req.num_computed_tokens = num_computed_tokens
            req.status = RequestStatus.RUNNING
            self.blocks.cache_computed(request_id, req.all_token_ids, num_computed_tokens)
            self.scheduler.add_running(req)
        else:
            self.scheduler.add(req)
        self.requests[request_id] = req
        return req

    def abort(self, request_id: str) -> Request | None:
        """Drop a request wherever it is and free its blocks; the request, or None if unknown."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.finish(req, "abort")
        return req

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ----- stepping -----

    def step(self) -> list[TokenOutput]:
        batch = self.schedule()
        if not batch.requests:
            return []
        conn = self.connector
        if conn is None:
            sampled = self.runner.execute(batch, self.blocks.block_tables)
        else:
            conn.start_step(batch, self.blocks.block_tables)
            sampled = self.runner.execute(batch, self.blocks.block_tables, before_layer=conn.before_layer,
                                          after_layer=conn.after_layer)
            conn.end_step()
        return self.complete(batch, sampled)

    def schedule(self) -> ScheduledBatch:
        return self.scheduler.schedule()

    def complete(self, batch: ScheduledBatch, sampled: dict[str, int]) -> list[TokenOutput]:
        """Commit a step that ran: account its tokens, append the sampled ones, apply the stop rule.

        Requests whose KV loads failed (the connector says so) are rolled back to recompute,
        and their sampled tokens, computed over KV that never arrived, are dropped.
        """
        failed = self.connector.failed_loads() if self.connector is not None else set()
        if failed:
            self.scheduler.recompute([r for r in batch.requests if r.request_id in failed])
        self.scheduler.commit(batch, skip=failed)
        outputs = []
        for req in batch.requests:
            token = sampled.get(req.request_id)
            if token is None or req.request_id in failed or req.finished:
                continue
            req.all_token_ids.append(token)
            outputs.append(self._advance(req, token))
        return outputs

    def _advance(self, req: Request, token: int) -> TokenOutput:
        p = req.params
        reason = None
        if not p.ignore_eos and token in self.eos_token_ids or token in p.stop_token_ids:
            reason = "stop"
        elif req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is not None:
            del self.requests[req.request_id]
            self.scheduler.finish(req, reason)
        return TokenOutput(req.request_id, [token], reason is not None, reason, req.num_cached_tokens,
                           req.num_preemptions)
