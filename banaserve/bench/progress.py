"""A one-line live progress bar on stderr: requests done, current rate, running P99 TTFT."""

from __future__ import annotations

import asyncio
import bisect
import sys
import time
from typing import TextIO

import numpy as np

from banaserve.bench.metrics import ttft_s
from banaserve.bench.results import RequestRecord

BAR_WIDTH = 24


class Progress:
    """Redrawn every `interval_s` with a carriage return; the rate covers the last `window_s`."""

    def __init__(
        self, total: int, stream: TextIO | None = None, interval_s: float = 0.5, window_s: float = 5.0
    ):
        self.total = total
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.window_s = window_s
        self.completed = 0
        self.failed = 0
        self.ttfts_ms: list[float] = []
        self.done_times: list[float] = []
        self.t0 = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._width = 0

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._handle = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def done(self, record: RequestRecord) -> None:
        self.completed += 1
        self.done_times.append(time.perf_counter())
        ttft = ttft_s(record)
        if not record.ok:
            self.failed += 1
        elif ttft is not None:
            self.ttfts_ms.append(ttft * 1000.0)

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = now - self.t0
        recent = len(self.done_times) - bisect.bisect_left(self.done_times, now - self.window_s)
        rate = recent / min(self.window_s, elapsed) if elapsed > 0 else 0.0
        p99 = f"{np.percentile(self.ttfts_ms, 99):.0f} ms" if self.ttfts_ms else "-"
        filled = BAR_WIDTH * self.completed // max(self.total, 1)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return (
            f"[{bar}] {self.completed}/{self.total} done ({self.failed} failed) | "
            f"{rate:.1f} req/s | p99 TTFT {p99} | {elapsed:.0f}s"
        )

    def _draw(self, text: str, end: str = "") -> None:
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad + end)
        self.stream.flush()

    def _tick(self) -> None:
        self._draw(self.line())
        self._handle = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._draw(self.line(), end="\n")
