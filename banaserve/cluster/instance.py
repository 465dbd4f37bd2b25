"""One instance process: an LLMEngine driven over ZeroMQ by the router.

Run as `python -m banaserve.cluster.instance '<InstanceSpec as JSON>'` (the router does this).
A single thread steps the engine and handles control messages between steps, so engine state
is never touched concurrently; the stats thread and, by role, the KV push thread (prefill) or
the TCP receive thread (decode) run beside it. The process exits on Shutdown, SIGTERM or when
its parent (the router) disappears, unlinking its shared-memory KV cache on the way out.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import msgspec
import torch
import zmq

from banaserve.cluster import messages as m
from banaserve.cluster.decode_side import DecodeSide
from banaserve.cluster.pd_connector import PushConnector
from banaserve.cluster.stats import LoadMeter, StatsPublisher
from banaserve.engine.kv_connector import add_request_with_history, install_kv_caches, prime_detokenizer
from banaserve.engine.llm_engine import LLMEngine
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.tokenizer import IncrementalDetokenizer
from banaserve.policies.view import InstanceStats
from banaserve.transfer.layout import KVLayout, TransferRefused
from banaserve.transfer.shm_kv import ShmKVSegment
from banaserve.transfer.tcp_channel import TcpKVReceiver


@dataclasses.dataclass(slots=True)
class PrefillOnly:
    """A request this instance only prefills: what the client really asked for."""

    tid: int
    params_max_tokens: int
    history: list[int]
    num_tokens: int  # prompt + history + the token sampled here


class Instance:
    def __init__(self, spec: m.InstanceSpec):
        self.spec = spec
        self.stopping = False
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
            e.set_kv_connector(self.connector)
        self.decode = DecodeSide(e, self.receiver, spec.admit_wait_s)
        self.prefill_only: dict[str, PrefillOnly] = {}
        self.meter = LoadMeter()
        self.enc, self.dec = m.encoder(), m.to_instance_decoder()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"i{spec.instance_id}".encode())
        self.sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_CONTROL_BYTES)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(spec.control_addr)
        self._snapshot = self._take_snapshot()
        self._snapshot_at = time.monotonic()
        self.publisher = StatsPublisher(self.ctx, spec.stats_addr, spec.stats_interval_s,
                                        lambda: self._snapshot, self._parent_alive)
        mc = e.model_config
        self.send(m.Hello(spec.instance_id, spec.role, os.getpid(), self.layout,
                          self.segment.name if self.segment else None,
                          self.receiver.addr if self.receiver else None, e.max_model_len,
                          mc.vocab_size, list(mc.eos_token_ids)))

    def send(self, msg) -> None:
        self.sock.send(self.enc.encode(msg))

    def _parent_alive(self) -> bool:
        return os.getppid() == self.spec.parent_pid and not self.stopping

    # ----- main loop -----

    def run(self) -> None:
        e = self.engine
        while not self.stopping and self._parent_alive():
            self._drain()
            for failure in self.decode.poll():
                self.send(failure)
            if e.has_unfinished_requests():
                t0 = time.perf_counter()
                outs = e.step()
                self.meter.record(time.perf_counter() - t0)
                self._emit(outs)
            else:
                self.sock.poll(5 if self.decode.pending else 20)
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
            self._handle(msg)

    def _handle(self, msg) -> None:
        if isinstance(msg, m.Add):
            self._add(msg)
        elif isinstance(msg, m.Reserve):
            self.send(self.decode.reserve(msg))
        elif isinstance(msg, m.Admit):
            failure = self.decode.admit(msg)
            if failure is not None:
                self.send(failure)
        elif isinstance(msg, m.Release):
            self.decode.release(msg.tid)
        elif isinstance(msg, m.Abort):
            self.engine.abort_request(msg.rid)
            self.decode.abort(msg.rid)
            self.prefill_only.pop(msg.rid, None)
            if self.connector is not None:
                self.connector.forget(msg.rid)
            if msg.ack:
                self.send(m.Aborted(msg.rid))
        elif isinstance(msg, m.GetStats):
            self._refresh_snapshot()
            self.send(m.Stats(self._snapshot))
        elif isinstance(msg, m.DropPeer):
            if self.connector is not None:
                self.connector.drop_peer(msg.addr)
        elif isinstance(msg, m.Shutdown):
            self.stopping = True

    def _add(self, a: m.Add) -> None:
        e = self.engine
        n = len(a.prompt) + len(a.history)
        params = a.params
        if a.push is not None:
            params = dataclasses.replace(params, max_tokens=len(a.history) + 1)  # one new token here
            try:
                if self.connector is None:
                    raise TransferRefused("this instance does not push KV")
                if n >= e.max_model_len:
                    raise ValueError("request does not fit the model's context")
                self.connector.add(a.rid, a.push, n)
            except (TransferRefused, ValueError, OSError, TimeoutError) as exc:
                self.send(m.PrefillDone(a.rid, a.push.tid, False, f"{type(exc).__name__}: {exc}"))
                return
            self.prefill_only[a.rid] = PrefillOnly(a.push.tid, a.params.max_tokens, list(a.history), n + 1)
        try:
            if n >= e.max_model_len:
                raise ValueError(f"request has {n} tokens but the model's context is {e.max_model_len}")
            add_request_with_history(e, a.rid, a.prompt, params, a.history)
        except ValueError as exc:
            self.prefill_only.pop(a.rid, None)
            if self.connector is not None:
                self.connector.forget(a.rid)
            self.send(m.Failed(a.rid, str(exc)))

    def _emit(self, outs: list[RequestOutput]) -> None:
        items = []
        for o in outs:
            po = self.prefill_only.pop(o.request_id, None)
            if po is None:
                items.append(m.Out(o.request_id, o.new_token_ids, o.new_text, o.finished, o.finish_reason,
                                   o.text if o.finished else None, o.num_cached_tokens, o.num_preemptions))
            else:
                self.send(self._prefill_done(o, po))
        if items:
            self.send(m.Outputs(items))

    def _prefill_done(self, o: RequestOutput, po: PrefillOnly) -> m.PrefillDone:
        """Report the token sampled here, finished only if the client's request really ends with it."""
        error = self.connector.results.pop(o.request_id, "transfer did not complete")
        truly = (o.finish_reason == "stop" or len(po.history) + 1 >= po.params_max_tokens
                 or po.num_tokens >= self.engine.max_model_len)
        if truly:
            out = m.Out(o.request_id, o.new_token_ids, o.new_text, True, o.finish_reason, o.text,
                        o.num_cached_tokens, o.num_preemptions)
        else:
            # the text delta the decode side's primed detokenizer will continue from
            detok = IncrementalDetokenizer(self.engine.tokenizer)
            prime_detokenizer(detok, po.history)
            before = len(detok.text)
            detok.add(o.new_token_ids)
            out = m.Out(o.request_id, o.new_token_ids, detok.text[before:], False, None, None,
                        o.num_cached_tokens, o.num_preemptions)
        return m.PrefillDone(o.request_id, po.tid, error is None, error or "", out)

    # ----- stats -----

    def _take_snapshot(self) -> InstanceStats:
        e, s = self.engine, self.engine.scheduler
        queued = sum(r.num_tokens - r.num_computed_tokens for r in s.waiting)
        queued += sum(r.num_tokens - r.num_computed_tokens for r in s.running)
        c, rcv = self.connector, self.receiver
        return InstanceStats(
            instance_id=self.spec.instance_id, role=self.spec.role, pid=os.getpid(),
            num_waiting=len(s.waiting), num_running=len(s.running), num_reserved=self.decode.num_reserved,
            tokens_queued=queued, kv_blocks_used=e.blocks.num_used_blocks, kv_blocks_total=e.num_blocks,
            kv_blocks_cached_free=e.blocks.pool.num_cached_free, step_time_ms=self.meter.step_time_ms,
            busy_fraction=self.meter.busy_fraction(), num_steps=self.meter.num_steps,
            num_preemptions=s.num_preemptions, bytes_pushed=c.bytes_pushed if c else 0,
            bytes_received=rcv.bytes_received if rcv else 0,
            transfers_ok=c.transfers_ok if c else 0, transfers_failed=c.transfers_failed if c else 0)

    def _refresh_snapshot(self) -> None:
        self._snapshot = self._take_snapshot()
        self._snapshot_at = time.monotonic()

    def close(self) -> None:
        self.stopping = True
        self.publisher.close()
        if self.connector is not None:
            self.connector.close()
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
            inst.stopping = True
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
