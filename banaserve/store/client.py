"""An engine's handle on the local store: control calls over ZeroMQ, blocks through the arena.

Calls are synchronous with a short timeout. A store that does not answer is treated as empty
(every lookup 0, every put refused) for `retry_after_s`, then asked again: a dead store costs
recomputes, never a request, and never a stalled step.
"""

from __future__ import annotations

import itertools
import time

import msgspec
import zmq

from banaserve.store import messages as sm
from banaserve.transfer.layout import KVLayout, TransferRefused
from banaserve.transfer.shm_kv import ShmKVSegment


class StoreUnavailable(RuntimeError):
    pass


class StoreClient:
    def __init__(self, addr: str, layout: KVLayout, timeout_s: float = 0.5, retry_after_s: float = 2.0):
        self.addr = addr
        self.layout = layout
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        # the process-wide context: a per-client one, dropped unclosed, blocks its finalizer on
        # the socket it still holds (zmq's term waits for sockets)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, sm.MAX_MESSAGE_BYTES)
        self.sock.connect(addr)
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(sm.Reply)
        self._reqs = itertools.count(1)
        self.down_until = 0.0
        self.backoff_s = retry_after_s
        self.arena: ShmKVSegment | None = None
        try:
            self.attach()
        except BaseException:
            self.sock.close(linger=0)
            raise

    def attach(self) -> None:
        """Map the store's arena; refuse a store whose layout differs from ours (TransferRefused)."""
        r = self._call(sm.Attach(0, self.layout))
        if not r.ok:
            raise TransferRefused(f"KV store refused this engine: {r.error}")
        arena = ShmKVSegment.attach(r.arena)
        try:
            self.layout.check(arena.layout)
        except TransferRefused:
            arena.close()
            raise
        self.arena = arena

    @property
    def available(self) -> bool:
        return self.arena is not None and time.monotonic() >= self.down_until

    def _call(self, msg):
        """Send `msg` and wait for its reply; StoreUnavailable after the timeout."""
        msg.req = next(self._reqs)
        self.sock.send(self.enc.encode(msg))
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1000))):
                break
            try:
                reply = self.dec.decode(self.sock.recv())
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if reply.req == msg.req:
                self.backoff_s = self.retry_after_s
                return reply
        # silent: read it as empty for a while, longer each time (a dead store costs one timeout
        # per backoff, not one per request)
        self.down_until = time.monotonic() + self.backoff_s
        self.backoff_s = min(2 * self.backoff_s, 60.0)
        raise StoreUnavailable(f"KV store at {self.addr} did not answer in {self.timeout_s} s")

    def _try(self, msg, default):
        if not self.available:
            return default
        try:
            return self._call(msg)
        except StoreUnavailable:
            return default

    def lookup(self, keys: list[bytes]) -> int:
        r = self._try(sm.Lookup(0, keys), None)
        return r.n if r is not None else 0

    def get(self, keys: list[bytes]) -> tuple[int, list[int]]:
        """A read lease on the stored prefix of `keys`: (lease id, slots); (0, []) if none."""
        r = self._try(sm.Get(0, keys), None)
        return (r.id, r.slots) if r is not None and self._valid(r.slots) else (0, [])

    def put(self, keys: list[bytes]) -> tuple[int, list[int]]:
        """Phase one of a put: (put id, a slot per key, -1 where nothing is to be written)."""
        r = self._try(sm.Put(0, keys), None)
        if r is None or len(r.slots) != len(keys) or not self._valid(r.slots):
            return 0, [-1] * len(keys)
        return r.id, r.slots

    def release(self, lease: int) -> None:
        if lease:
            self._try(sm.Release(0, lease), None)

    def commit(self, put: int, ok: bool = True) -> None:
        if put:
            self._try(sm.Commit(0, put, ok), None)

    def stats(self) -> sm.StoreStats | None:
        return self._try(sm.GetStats(0), None)

    def _valid(self, slots: list[int]) -> bool:
        n = self.arena.layout.num_blocks
        return all(-1 <= s < n for s in slots)

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        self.sock.close(linger=0)


def connect(addr: str, layout: KVLayout, wait_s: float = 60.0) -> StoreClient:
    """A client of the store at `addr`, waiting up to `wait_s` for it to start answering."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return StoreClient(addr, layout)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
