"""A background thread that runs a prefill instance's layer pushes while the forward continues.

`after_layer(l)` only enqueues; the copy (or gather + send) runs here, overlapping the compute
of layer l+1 (torch copies release the GIL). `flush()` at the end of the step waits for all of
them, so the source blocks are never read after the step returns and the engine may free them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch


class PushWorker:
    """Runs submitted jobs in order on one thread; records the first error per key."""

    def __init__(self, name: str = "kv-push"):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._errors: dict[Any, str] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: Any, fn: Callable, *args) -> None:
        """Queue `fn(*args)`; it is skipped if an earlier job with the same key failed."""
        with self._cond:
            self._pending += 1
        self._q.put((key, fn, args, None))

    def call(self, fn: Callable, *args, timeout: float | None = None):
        """Run `fn(*args)` on the worker thread and return its result (for socket-owning objects)."""
        fut: Future = Future()
        with self._cond:
            self._pending += 1
        self._q.put((None, fn, args, fut))
        return fut.result(timeout)

    def flush(self) -> dict[Any, str]:
        """Wait until every queued job ran; return (and clear) the errors by key."""
        with self._cond:
            while self._pending:
                self._cond.wait()
            errors, self._errors = self._errors, {}
        return errors

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                item = self._q.get()
                if item is None:
                    return
                key, fn, args, fut = item
                try:
                    if fut is not None:
                        try:
                            fut.set_result(fn(*args))
                        except BaseException as exc:  # handed to the caller
                            fut.set_exception(exc)
                    elif key not in self._errors:
                        fn(*args)
                except Exception as exc:
                    self._errors.setdefault(key, f"{type(exc).__name__}: {exc}")
                finally:
                    with self._cond:
                        self._pending -= 1
                        if not self._pending:
                            self._cond.notify_all()
