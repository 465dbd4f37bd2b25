"""The local Global KV Cache Store: one process owning a shared-memory arena of KV blocks.

Engines on this host attach the arena (a KV-cache-shaped segment, transfer/shm_kv.py, whose
"blocks" are the store's slots) and copy blocks in and out of it in place: one copy each way. This
process only keeps the index (index.py) and answers the control protocol (messages.py) on a
ZeroMQ ROUTER socket. The first client's KV layout sizes the arena; a client whose layout (model
fingerprint, shape, dtype) differs is refused. It exits when its parent process goes away,
unlinking the arena.

    python -m banaserve.store.server --addr ipc:///tmp/x/store --capacity-gb 4 --owner-pid PID
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid

import msgspec
import zmq

from banaserve.store import messages as sm
from banaserve.store.index import StoreIndex
from banaserve.transfer import shm_kv
from banaserve.transfer.layout import KVLayout


class StoreServer:
    def __init__(self, addr: str, capacity_bytes: int, owner_pid: int, high_watermark: float = 0.95,
                 low_watermark: float = 0.90, timeout_s: float = 30.0):
        if capacity_bytes <= 0:
            raise ValueError("store capacity must be positive")
        self.capacity_bytes = capacity_bytes
        self.owner_pid = owner_pid
        self.watermarks = (high_watermark, low_watermark)
        self.timeout_s = timeout_s
        self.layout: KVLayout | None = None
        self.arena_name = ""
        self.index: StoreIndex | None = None
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.MAXMSGSIZE, sm.MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(addr)
        self.dec = msgspec.msgpack.Decoder(sm.Request)
        self.enc = msgspec.msgpack.Encoder()
        self.stopping = False

    def run(self) -> None:
        while not self.stopping and os.getppid() == self.owner_pid:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                if len(frames) == 2:
                    reply = self.handle(frames[1])
                    if reply is not None:
                        self.sock.send_multipart([frames[0], self.enc.encode(reply)])
            if self.index is not None:
                self.index.expire(time.monotonic())

    def handle(self, raw: bytes):
        try:
            msg = self.dec.decode(raw)
            if hasattr(msg, "keys"):
                sm.check_keys(msg.keys)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            print(f"kv store: bad request dropped: {exc}", file=sys.stderr)
            return None
        if isinstance(msg, sm.Attach):
            return self._attach(msg)
        idx, now = self.index, time.monotonic()
        if isinstance(msg, sm.Lookup):
            return sm.Found(msg.req, idx.lookup(msg.keys) if idx else 0)
        if isinstance(msg, sm.Get):
            lease, slots = idx.acquire(msg.keys, now) if idx else (0, [])
            return sm.Slots(msg.req, lease, slots)
        if isinstance(msg, sm.Put):
            put, slots = idx.reserve(msg.keys, now) if idx else (0, [-1] * len(msg.keys))
            return sm.Slots(msg.req, put, slots)
        if isinstance(msg, sm.Release):
            if idx:
                idx.release(msg.lease)
            return sm.Done(msg.req)
        if isinstance(msg, sm.Commit):
            if idx:
                idx.commit(msg.put) if msg.ok else idx.abort(msg.put)
            return sm.Done(msg.req)
        s = idx.stats if idx else None
        lay = self.layout
        return sm.StoreStats(msg.req, idx.num_slots if idx else 0, idx.num_used if idx else 0,
                             s.hits if s else 0, s.misses if s else 0, s.puts if s else 0,
                             s.evictions if s else 0, s.refused if s else 0,
                             lay.block_bytes * lay.num_layers if lay else 0)

    def _attach(self, msg: sm.Attach) -> sm.Attached:
        try:
            msg.layout.validate()
        except ValueError as exc:
            return sm.Attached(msg.req, False, error=str(exc))
        if self.layout is None:
            per_slot = msg.layout.block_bytes * msg.layout.num_layers
            num_slots = self.capacity_bytes // per_slot
            if num_slots < 1:
                return sm.Attached(msg.req, False, error="store capacity is smaller than one block")
            layout = KVLayout(msg.layout.fingerprint, msg.layout.num_layers, msg.layout.block_size,
                              msg.layout.num_kv_heads, msg.layout.head_dim, msg.layout.dtype, num_slots)
            name = shm_kv.segment_name(self.owner_pid, f"store-{uuid.uuid4().hex[:8]}")
            shm_kv.create_file(name, layout)
            self.layout, self.arena_name = layout, name
            high, low = self.watermarks
            self.index = StoreIndex(num_slots, high, low, self.timeout_s, self.timeout_s)
        why = self.layout.mismatch(msg.layout)
        if why is not None:
            return sm.Attached(msg.req, False, error=f"KV layout mismatch: {why}")
        return sm.Attached(msg.req, True, self.arena_name)

    def close(self) -> None:
        if self.arena_name:
            shm_kv.unlink(self.arena_name)
        self.sock.close(linger=0)
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="banaserve.store.server", description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True)
    p.add_argument("--capacity-gb", type=float, required=True)
    p.add_argument("--owner-pid", type=int, default=os.getppid())
    p.add_argument("--high-watermark", type=float, default=0.95)
    p.add_argument("--low-watermark", type=float, default=0.90)
    p.add_argument("--timeout-s", type=float, default=30.0, help="uncommitted puts and unreleased leases expire")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = StoreServer(a.addr, int(a.capacity_gb * (1 << 30)), a.owner_pid, a.high_watermark, a.low_watermark,
                         a.timeout_s)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "stopping", True))
    try:
        server.run()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
