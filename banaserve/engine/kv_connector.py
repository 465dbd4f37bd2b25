"""The engine's one seam for moving KV in and out (after vLLM's connector contract).

Worker side, called by `LLMEngine.step` around the forward: `start_step` sees the batch before
it runs, `after_layer(l)` fires as soon as layer l's KV of the step is written (the moment to
save or send it, overlapping the rest of the forward), `end_step` runs before the step's tokens
are committed. Scheduler side: `request_finished` may keep a finished request's blocks (return
True) until the connector calls `release_blocks`, e.g. while an asynchronous send still reads
them. PD transfer, the KV store and migration implement this contract.

Two helpers let a KV mover place requests that did not start here: `add_request_with_history`
(resume a request whose first output tokens were produced elsewhere, optionally with its KV
already in place) and `install_kv_caches` (put the cache into memory others can reach).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from banaserve.engine.request import Request, RequestStatus
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.tokenizer import IncrementalDetokenizer

if TYPE_CHECKING:
    from banaserve.engine.llm_engine import LLMEngine
    from banaserve.engine.scheduler import ScheduledBatch


class KVConnector:
    """No-op base: override what the mover needs. All calls come from the engine's step thread."""

    def start_step(self, batch: ScheduledBatch, block_tables: dict[str, list[int]]) -> None:
        """The batch about to run (request.num_computed_tokens is still the chunk's start)."""

    def after_layer(self, layer: int) -> None:
        """Layer `layer`'s KV for every token of the step is in the cache."""

    def end_step(self) -> None:
        """The forward is done; runs before the step's tokens are committed or outputs made."""

    def request_finished(self, req: Request) -> bool:
        """True to keep the request's blocks after it finished (free them with `release_blocks`)."""
        return False


def release_blocks(engine: LLMEngine, request_id: str) -> None:
    """Free the blocks of a finished request whose release `request_finished` delayed."""
    engine.blocks.free(request_id)


def add_request_with_history(engine: LLMEngine, request_id: str, prompt_token_ids: list[int],
                             params: SamplingParams, history: list[int],
                             num_computed_tokens: int = 0) -> Request:
    """Add a request whose first output tokens `history` were produced elsewhere.

    Outputs continue the same stream: token_ids and text include `history`, max_tokens counts
    it, and the detokenizer is primed so new_text picks up where the other engine stopped.
    With `num_computed_tokens` = 0 the whole of prompt + history is prefilled here (a re-run).
    Otherwise the KV of the first `num_computed_tokens` tokens must already be in the request's
    blocks (`engine.blocks.block_tables[request_id]`, reserved earlier) and the request starts
    running right away, as a decode.
    """
    engine.add_request(request_id, prompt_token_ids=prompt_token_ids, params=params)
    req = engine.requests[request_id]
    vocab = engine.model_config.vocab_size
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in history):
        engine.abort_request(request_id)
        raise ValueError(f"history token ids must be integers in [0, {vocab})")
    req.all_token_ids.extend(history)
    if history:
        detok = engine.detokenizers[request_id]
        prime_detokenizer(detok, history)
        engine.emitted_text[request_id] = len(detok.text)
    if num_computed_tokens:
        table = engine.blocks.block_tables.get(request_id)
        if not 0 < num_computed_tokens < req.num_tokens or table is None or \
                len(table) < engine.blocks.blocks_for(num_computed_tokens):
            engine.abort_request(request_id)
            raise ValueError("remote-prefilled request has no reserved blocks for its KV")
        engine.scheduler.waiting.remove(req)
        req.num_computed_tokens = num_computed_tokens
        req.status = RequestStatus.RUNNING
        engine.scheduler.add_running(req)
        engine.blocks.cache_computed(request_id, req.all_token_ids, num_computed_tokens)
    return req


def prime_detokenizer(detok: IncrementalDetokenizer, token_ids: list[int]) -> None:
    """Feed tokens one at a time, as the engine that produced them did, so the text matches theirs.

    Decoding them in one go can differ at character boundaries from the token-by-token deltas
    the client already received.
    """
    for t in token_ids:
        detok.add([t])


def install_kv_caches(engine: LLMEngine, caches: list[torch.Tensor]) -> None:
    """Swap the engine's KV cache tensors for `caches` (same shapes and dtype), e.g. shared memory.

    Only valid before the engine ran anything: the old caches' contents are not copied.
    """
    old = engine.runner.kv_caches
    if len(caches) != len(old) or any(c.shape != o.shape or c.dtype != o.dtype
                                      for c, o in zip(caches, old, strict=True)):
        raise ValueError("replacement KV caches must match the engine's layout")
    old[:] = caches
