"""One instance process: an engine core and its InstanceHandler (handler.py) driven over ZeroMQ.

Run as `python -m banaserve.cluster.instance '<InstanceSpec as JSON>'` (the router does this).
A single thread steps the engine and handles control messages between steps, so engine state
is never touched concurrently; the stats thread and, by role, the KV push thread (prefill) or
the TCP receive thread (decode) run beside it. The process exits on Shutdown, SIGTERM or when
its parent (the router) disappears, unlinking its shared-memory KV cache on the way out.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import msgspec
import torch
import zmq

from banaserve.cluster import messages as m
from banaserve.cluster.decode_side import DecodeSide
from banaserve.cluster.handler import InstanceHandler
from banaserve.cluster.pd_connector import PushConnector
from banaserve.cluster.stats import LoadMeter, StatsPublisher
from banaserve.engine.kv_connector import MultiConnector
from banaserve.engine.llm_engine import LLMEngine
from banaserve.store.client import connect
from banaserve.store.connector import StoreConnector
from banaserve.transfer.layout import KVLayout
from banaserve.transfer.shm_kv import ShmKVSegment
from banaserve.transfer.tcp_channel import TcpKVReceiver


def install_kv_caches(engine: LLMEngine, caches: list[torch.Tensor]) -> None:
    """Swap the engine's KV cache tensors for `caches` (same shapes and dtype), e.g. shared memory.

    Only valid before the engine ran anything: the old caches' contents are not copied.
    """
    old = engine.runner.kv_caches
    if len(caches) != len(old) or any(c.shape != o.shape or c.dtype != o.dtype
                                      for c, o in zip(caches, old, strict=True)):
        raise ValueError("replacement KV caches must match the engine's layout")
    old[:] = caches


class Instance:
    def __init__(self, spec: m.InstanceSpec):
        self.spec = spec
        self.engine = LLMEngine(spec.engine)
        e = self.engine
        kv = e.runner.kv_caches
        self.segment: ShmKVSegment | None = None
        self.receiver: TcpKVReceiver | None = None
        self.connector: PushConnector | None = None
        if spec.role == "decode":
            # reachable both ways: peers on this host write the shared cache, others send over TCP
            if spec.shm_name:
                if e.device.type != "cpu":  # device auto picked a GPU: ClusterConfig could not know
                    raise ValueError(f"transfer shm needs device cpu (the KV cache lives in host shared "
                                     f"memory), but this instance runs on {e.device}; use transfer tcp")
                self.segment = ShmKVSegment.create(spec.shm_name, KVLayout.of(e.fingerprint, kv))
                install_kv_caches(e, self.segment.tensors)
            self.receiver = TcpKVReceiver(KVLayout.of(e.fingerprint, kv), e.runner.kv_caches,
                                          e.blocks.blocks_for(e.max_model_len), spec.transfer_host)
        self.layout = KVLayout.of(e.fingerprint, e.runner.kv_caches)
        if spec.role == "prefill":
            self.connector = PushConnector(e.runner.kv_caches, self.layout)
        self.store: StoreConnector | None = None
        if spec.kv_store_addr:  # every role loads prompts' hits and saves new blocks (decode: history)
            self.store = StoreConnector(connect(spec.kv_store_addr, self.layout), e.runner.kv_caches,
                                        e.block_size, e.blocks.root_hash)
        movers = [c for c in (self.store, self.connector) if c is not None]  # loads before pushes
        if movers:
            e.set_kv_connector(movers[0] if len(movers) == 1 else MultiConnector(movers))
        self.enc, self.dec = m.encoder(), m.to_instance_decoder()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"i{spec.instance_id}".encode())
        self.sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_CONTROL_BYTES)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(spec.control_addr)
        self.meter = LoadMeter()
        self.handler = InstanceHandler(spec.instance_id, spec.role, os.getpid(), e.core, self.send,
                                       DecodeSide(e.core, self.receiver, spec.admit_wait_s), self.connector,
                                       self.meter)
        self.handler.store = self.store
        self._snapshot = self.handler.snapshot()
        self._snapshot_at = time.monotonic()
        self.publisher = StatsPublisher(self.ctx, spec.stats_addr, spec.stats_interval_s,
                                        lambda: self._snapshot, self._parent_alive)
        mc = e.model_config
        self.send(m.Hello(spec.instance_id, spec.role, os.getpid(), self.layout,
                          self.segment.name if self.segment else None,
                          self.receiver.addr if self.receiver else None, e.max_model_len,
                          mc.vocab_size, list(mc.eos_token_ids)))

    @property
    def stopping(self) -> bool:
        return self.handler.stopping

    def send(self, msg) -> None:
        self.sock.send(self.enc.encode(msg))

    def _parent_alive(self) -> bool:
        return os.getppid() == self.spec.parent_pid and not self.stopping

    # ----- main loop -----

    def run(self) -> None:
        e, h = self.engine, self.handler
        while not self.stopping and self._parent_alive():
            self._drain()
            h.poll()
            if e.has_unfinished_requests():
                t0 = time.perf_counter()
                h.step()
                self.meter.record(time.perf_counter() - t0)
            else:
                self.sock.poll(5 if h.decode.pending else 20)
            if time.monotonic() - self._snapshot_at >= self.spec.stats_interval_s / 2:
                self._refresh_snapshot()

    def _drain(self) -> None:
        while self.sock.poll(0):
            raw = self.sock.recv()
            try:
                msg = self.dec.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                print(f"instance {self.spec.instance_id}: bad message dropped: {exc}", file=sys.stderr)
                continue
            if isinstance(msg, m.GetStats):
                self._refresh_snapshot()
            self.handler.handle(msg)

    def _refresh_snapshot(self) -> None:
        self._snapshot = self.handler.snapshot()
        self._snapshot_at = time.monotonic()

    def close(self) -> None:
        self.handler.stopping = True
        self.publisher.close()
        if self.connector is not None:
            self.connector.close()
        if self.store is not None:
            self.store.close()
        if self.receiver is not None:
            self.receiver.close()
        if self.segment is not None:
            self.segment.unlink()
        self.sock.close(linger=200)
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = msgspec.json.decode(argv[0].encode(), type=m.InstanceSpec)
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the router decides when we stop
    inst: Instance | None = None

    def on_term(signum, frame):
        if inst is not None:
            inst.handler.stopping = True
        else:
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        inst = Instance(spec)
        inst.run()
    finally:
        if inst is not None:
            inst.close()
        elif spec.shm_name:
            from banaserve.transfer.shm_kv import unlink
            unlink(spec.shm_name)  # failed half-way through start-up
    return 0


if __name__ == "__main__":
    sys.exit(main())
