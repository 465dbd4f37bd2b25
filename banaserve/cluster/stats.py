"""An instance's load figures: snapshots taken by the engine thread, published by a stats thread.

The engine thread refreshes the snapshot between steps; a separate thread sends the latest one
every interval over its own socket, so the router hears from the instance even during a long
step (a silent instance is a dead or hung one).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import zmq

from banaserve.cluster.messages import MAX_STATS_BYTES, Stats, encoder
from banaserve.policies.view import InstanceStats

BUSY_WINDOW_S = 1.0


class LoadMeter:
    """Step time (moving average) and busy fraction over the last ~second, fed by the step loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.step_time_ms = 0.0
        self.num_steps = 0
        self._window_start = clock()
        self._busy = 0.0
        self._last_fraction = 0.0

    def record(self, seconds: float) -> None:
        self.num_steps += 1
        ms = seconds * 1000
        self.step_time_ms = ms if self.num_steps == 1 else 0.8 * self.step_time_ms + 0.2 * ms
        self._busy += seconds

    def busy_fraction(self) -> float:
        now = self.clock()
        span = now - self._window_start
        if span >= BUSY_WINDOW_S:
            self._last_fraction = min(1.0, self._busy / span)
            self._window_start, self._busy = now, 0.0
            return self._last_fraction
        return max(self._last_fraction, min(1.0, self._busy / span)) if span > 0.1 else self._last_fraction


class StatsPublisher:
    """Thread sending `snapshot()` as a Stats message every `interval_s` (drops a send rather than block)."""

    def __init__(self, ctx: zmq.Context, addr: str, interval_s: float,
                 snapshot: Callable[[], InstanceStats], alive: Callable[[], bool]):
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 16)
        self.sock.connect(addr)
        self.interval_s = interval_s
        self.snapshot = snapshot
        self.alive = alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        enc = encoder()
        seq = 0
        while not self._stop.wait(self.interval_s) and self.alive():
            seq += 1
            msg = enc.encode(Stats(dataclasses.replace(self.snapshot(), seq=seq)))
            assert len(msg) < MAX_STATS_BYTES
            try:
                self.sock.send(msg, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # router busy: the next one carries fresher numbers anyway

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)
