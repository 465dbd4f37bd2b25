"""The one interface the HTTP server talks to: submit a request, stream its outputs, abort it.

`LocalEngineClient` runs one LLMEngine in a background thread of this process. The
multi-process cluster (router + instance processes) implements the same protocol.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from banaserve.engine.config import EngineConfig
from banaserve.engine.llm_engine import LLMEngine
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.sampling_params import SamplingParams

logger = logging.getLogger("banaserve.cluster")


@dataclass(slots=True)
class ModelInfo:
    name: str
    path: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]


class EngineClient(Protocol):
    model_info: ModelInfo

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError if the request can never be served (checked before streaming starts)."""

    def generate(self, request_id: str, prompt_token_ids: list[int],
                 params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Outputs as tokens arrive; the last one has finished=True. Breaking out aborts."""

    async def abort(self, request_id: str) -> None: ...

    def cluster_state(self) -> dict:
        """JSON-able view of instances (role, pid, stats, KV usage, in-flight transfers)."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class LocalEngineClient:
    """One in-process engine driven by a step thread; outputs are handed to asyncio queues."""

    def __init__(self, config: EngineConfig, name: str | None = None):
        self.engine = LLMEngine(config)
        e = self.engine
        self.model_info = ModelInfo(name or e.model_path.rstrip("/").rsplit("/", 1)[-1], e.model_path,
                                    e.max_model_len, e.model_config.vocab_size, e.model_config.eos_token_ids)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", ...) | ("abort", id)
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        # stats are read by other threads (HTTP /metrics); the step thread publishes a copy instead
        # of letting them walk the block pool while it changes
        self._num_aborted = 0
        self._stats = self._snapshot()
        self._stats_time = 0.0
        self._error: BaseException | None = None  # set if the step loop died

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        params.validate()
        self.engine.tokenize_prompt(None, prompt_token_ids)
        self.engine.check_fits(len(prompt_token_ids), params.max_tokens)

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine-step", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    def check_health(self) -> None:
        """Raise RuntimeError if the engine can no longer serve (its step loop died)."""
        if self._error is not None:
            raise RuntimeError(f"engine step loop failed: {self._error!r}")
        if self._thread is not None and not self._thread.is_alive() and not self._stop:
            raise RuntimeError("engine step loop is not running")

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        self.check_health()
        q: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), q)
        self._inbox.put(("add", request_id, prompt_token_ids, params))
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await q.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._inbox.put(("abort", request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def cluster_state(self) -> dict:
        return {"instances": [{"id": 0, "role": "unified", "pid": None, "stats": dict(self._stats)}]}

    def _snapshot(self) -> dict:
        return {**self.engine.stats(), "num_aborted": self._num_aborted}

    def _deliver(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, q = target
            loop.call_soon_threadsafe(q.put_nowait, item)

    def _loop(self) -> None:
        try:
            self._run_steps()
        except BaseException as exc:  # fail every open stream instead of leaving them waiting forever
            logger.exception("engine step loop failed")
            self._error = exc
            for rid in list(self._streams):
                self._deliver(rid, RuntimeError("the engine failed"))

    def _run_steps(self) -> None:
        engine = self.engine
        while not self._stop:
            while True:
                try:
                    msg = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if msg[0] == "add":
                    _, rid, ids, params = msg
                    try:
                        engine.add_request(rid, prompt_token_ids=ids, params=params)
                    except Exception as exc:  # refused request: tell its caller, keep serving
                        self._deliver(rid, exc if isinstance(exc, ValueError) else ValueError(str(exc)))
                else:
                    out = engine.abort_request(msg[1])
                    if out is not None:  # the stream, if still open, ends with finish_reason "abort"
                        self._num_aborted += 1
                        self._deliver(out.request_id, out)
            busy = engine.has_unfinished_requests()
            now = time.monotonic()
            # engine.stats() walks the free-block queue: every 50 ms while busy, not every step
            if not busy or now - self._stats_time >= 0.05:
                self._stats, self._stats_time = self._snapshot(), now
            if not busy:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            for out in engine.step():
                self._deliver(out.request_id, out)
