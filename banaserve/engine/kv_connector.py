"""The engine's one seam for moving KV in and out (after vLLM v1's connector contract).

Scheduler side, called while a waiting request is admitted:
- `num_loadable_tokens(req, num_local)`: how many tokens after the local prefix-cache hit
  (`num_local`) can be loaded from elsewhere (a store, a peer). None means "not known yet": the
  request stays waiting, without holding the step, and is asked again next step. The answer is
  cut to whole blocks and so that the last prompt token is always computed (its logits).
- `load_planned(req, block_ids, start, num_tokens)`: the scheduler counted tokens
  [start, start + num_tokens) as computed; the connector must put their KV into those block ids
  (`block_ids[i]` holds tokens [(first + i) * block_size, ...), first = start // block_size)
  before any layer reads it.
- `request_finished(req)`: True keeps a finished request's blocks (free with `release_blocks`).

Worker side, called by the step around the forward:
- `start_step(batch, block_tables)`: the batch about to run (num_computed_tokens is still the
  chunk's start, loaded tokens included).
- `before_layer(l)`: return once layer l's loaded KV is in the cache (loads overlap the layers
  before it).
- `after_layer(l)`: layer l's KV of the step is written (save or send it now).
- `end_step()`: the forward is done; runs before the step is committed.
- `failed_loads()`: request ids whose loads this step did not complete; the engine recomputes
  them (their blocks are freed uncached, their sampled tokens dropped), so a failed load costs a
  recompute, never a wrong token.

A connector may load and save in the same step. PD transfer, the store and migration are
implementations of this contract. All calls come from the engine's step thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from banaserve.engine.request import Request
    from banaserve.engine.scheduler import ScheduledBatch


class KVConnector:
    """No-op base: override what the mover needs."""

    # ----- scheduler side -----

    def num_loadable_tokens(self, req: Request, num_local: int) -> int | None:
        return 0

    def load_planned(self, req: Request, block_ids: list[int], start: int, num_tokens: int) -> None:
        """Called only when num_loadable_tokens answered > 0 and the scheduler admitted the request."""

    def request_finished(self, req: Request) -> bool:
        return False

    # ----- worker side -----

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        pass

    def before_layer(self, layer: int) -> None:
        pass

    def after_layer(self, layer: int) -> None:
        pass

    def end_step(self) -> None:
        pass

    def failed_loads(self) -> set[str]:
        return set()


class MultiConnector(KVConnector):
    """Several connectors on one engine (a store and a PD push, say): every hook goes to each in
    order; a request's load goes to the first connector that offers one."""

    def __init__(self, connectors: list[KVConnector]):
        self.connectors = connectors
        self.loader: dict[str, KVConnector] = {}  # request id -> the connector loading it

    def num_loadable_tokens(self, req: Request, num_local: int) -> int | None:
        for c in self.connectors:
            n = c.num_loadable_tokens(req, num_local)
            if n is None or n > 0:
                self.loader[req.request_id] = c
                return n
        self.loader.pop(req.request_id, None)
        return 0

    def load_planned(self, req: Request, block_ids: list[int], start: int, num_tokens: int) -> None:
        self.loader.pop(req.request_id).load_planned(req, block_ids, start, num_tokens)

    def request_finished(self, req: Request) -> bool:
        self.loader.pop(req.request_id, None)
        return any([c.request_finished(req) for c in self.connectors])  # every one is told

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        for c in self.connectors:
            c.start_step(batch, block_tables)

    def before_layer(self, layer: int) -> None:
        for c in self.connectors:
            c.before_layer(layer)

    def after_layer(self, layer: int) -> None:
        for c in self.connectors:
            c.after_layer(layer)

    def end_step(self) -> None:
        for c in self.connectors:
            c.end_step()

    def failed_loads(self) -> set[str]:
        return set().union(*(c.failed_loads() for c in self.connectors))
