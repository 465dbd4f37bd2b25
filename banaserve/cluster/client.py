"""ClusterClient: the EngineClient of a multi-process cluster (this process routes, instances compute).

The API process binds two ipc sockets: a ROUTER for control (each instance connects a DEALER
named `i<id>`) and a PULL for the stats instances publish. Three tasks run on the event loop:
receiving control messages into the Router state machine, receiving stats into the ClusterView,
and a monitor that notices dead instances (process exit, or stats silent for `dead_after_s`) and
expires transfer leases. Shutdown stops every process and unlinks every shared-memory segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator

import msgspec
import zmq
import zmq.asyncio

from banaserve.cluster import messages as m
from banaserve.cluster.config import ClusterConfig
from banaserve.cluster.engine_client import ModelInfo
from banaserve.cluster.procs import make_ipc_dir, spawn_instance, spawn_store, stop_processes, sweep_stale_ipc_dirs
from banaserve.cluster.router import Router
from banaserve.cluster.tracked import Tracked
from banaserve.engine.output_processor import OutputProcessor
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.tokenizer import TextTokenizer
from banaserve.models.config import ModelConfig
from banaserve.models.make_model import default_model_path
from banaserve.policies.view import ClusterView, InstanceStats
from banaserve.transfer import shm_kv

MONITOR_INTERVAL_S = 0.02


class ClusterClient:
    """Router + `config.roles()` instance processes on this host, behind the EngineClient protocol."""

    def __init__(self, config: ClusterConfig):
        config.validate()
        engine = dataclasses.replace(config.engine, model=config.engine.model or default_model_path())
        self.config = dataclasses.replace(config, engine=engine)
        mc = ModelConfig.from_pretrained(engine.model)
        max_len = min(engine.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        self.model_info = ModelInfo(config.name or engine.model.rstrip("/").rsplit("/", 1)[-1], engine.model,
                                    max_len, mc.vocab_size, list(mc.eos_token_ids))
        self.view = ClusterView()
        self.peers: dict[int, m.Hello] = {}
        self.procs: dict[int, subprocess.Popen] = {}
        self.store_proc: subprocess.Popen | None = None
        self.shm_names: dict[int, str] = {}
        self.router = Router(self.config, self.view, self._send, self.peers)
        self.outputs = OutputProcessor(TextTokenizer(engine.model))  # text is made here, not on instances
        self._enc, self._dec = m.encoder(), m.from_instance_decoder()
        self._stats_dec = msgspec.msgpack.Decoder(m.Stats)
        self._stats_waiters: dict[int, list[asyncio.Future]] = {}
        self._tasks: list[asyncio.Task] = []
        self._ctx: zmq.asyncio.Context | None = None
        self._ipc_dir: str | None = None
        self._closed = False

    # ----- lifecycle -----

    async def start(self) -> None:
        """Spawn the instances and wait until every one has loaded its model and said hello."""
        shm_kv.sweep_stale()
        sweep_stale_ipc_dirs()
        cfg = self.config
        self._ipc_dir = make_ipc_dir()
        self._ctx = zmq.asyncio.Context()
        self._ctrl = self._ctx.socket(zmq.ROUTER)
        self._stats = self._ctx.socket(zmq.PULL)
        for sock, limit in ((self._ctrl, m.MAX_CONTROL_BYTES), (self._stats, m.MAX_STATS_BYTES)):
            sock.setsockopt(zmq.MAXMSGSIZE, limit)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        ctrl_addr, stats_addr = f"ipc://{self._ipc_dir}/control", f"ipc://{self._ipc_dir}/stats"
        self._ctrl.bind(ctrl_addr)
        self._stats.bind(stats_addr)
        tag = uuid.uuid4().hex[:8]
        store_addr = f"ipc://{self._ipc_dir}/kvstore" if cfg.kv_store == "local" else None
        try:
            if store_addr is not None:
                self.store_proc = spawn_store(store_addr, cfg.kv_store_gb)
            for idx, role in enumerate(cfg.roles()):
                shm = shm_kv.segment_name(os.getpid(), f"{tag}-i{idx}") if role == "decode" else None
                if shm:
                    self.shm_names[idx] = shm
                self.view.instances[idx] = InstanceStats(idx, role, alive=False)
                spec = m.InstanceSpec(idx, role, cfg.engine, ctrl_addr, stats_addr, os.getpid(), cfg.transfer,
                                      shm, cfg.transfer_host, cfg.stats_interval_s, cfg.admit_wait_s,
                                      cfg.torch_threads, store_addr)
                self.procs[idx] = spawn_instance(spec)
            await self._wait_for_hellos()
        except BaseException:
            await self.shutdown()
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._recv_loop()), loop.create_task(self._stats_loop()),
                       loop.create_task(self._monitor_loop())]

    async def _wait_for_hellos(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while len(self.peers) < len(self.procs):
            for idx, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"instance {idx} exited with code {proc.returncode} during start-up "
                                       "(see its stderr above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"instances did not start within {self.config.start_timeout_s} s")
            if await self._ctrl.poll(100):
                frames = await self._ctrl.recv_multipart()
                idx = self._identity(frames)
                if idx is None:
                    continue
                msg = self._dec.decode(frames[1])
                if isinstance(msg, m.Hello) and msg.instance_id == idx:
                    msg.layout.validate()
                    self.peers[idx] = msg
                    s = self.view.get(idx)
                    s.alive, s.pid, s.kv_blocks_total = True, msg.pid, msg.layout.num_blocks
                    s.updated_at = time.monotonic()

    async def shutdown(self) -> None:
        """Stop all instances (Shutdown, then SIGTERM, then SIGKILL), unlink shared memory, close sockets."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for t in list(self.router.requests.values()):
            t.sink(RuntimeError("the cluster is shutting down"))
        self.router.requests.clear()
        if self._ctx is not None:
            for idx, proc in self.procs.items():
                if proc.poll() is None and idx in self.peers:
                    with contextlib.suppress(zmq.ZMQError):
                        await self._ctrl.send_multipart([f"i{idx}".encode(), self._enc.encode(m.Shutdown())])
        await asyncio.to_thread(stop_processes, list(self.procs.values()))
        if self.store_proc is not None:  # after the instances: none of them reads the arena any more
            self.store_proc.terminate()
            await asyncio.to_thread(stop_processes, [self.store_proc])
        for name in self.shm_names.values():
            shm_kv.unlink(name)
        if self._ctx is not None:
            self._ctrl.close(linger=0)
            self._stats.close(linger=0)
            self._ctx.term()
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)

    # ----- EngineClient -----

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        params.validate()
        info = self.model_info
        if not prompt_token_ids:
            raise ValueError("prompt is empty")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < info.vocab_size
               for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {info.vocab_size})")
        n = len(prompt_token_ids)
        if n >= info.max_model_len:
            raise ValueError(f"prompt has {n} tokens but the model's context is {info.max_model_len} tokens "
                             "(at least one must be left for output)")
        totals = [s.kv_blocks_total for s in self.view.instances.values() if s.kv_blocks_total]
        if totals:
            worst, bs = min(n + params.max_tokens, info.max_model_len), self.config.engine.block_size
            if -(-worst // bs) > min(totals):
                raise ValueError(f"request needs up to {worst} tokens of KV memory but an instance holds "
                                 f"{min(totals) * bs}")

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        q: asyncio.Queue = asyncio.Queue()
        self.router.submit(Tracked(request_id, list(prompt_token_ids), params, q.put_nowait))
        self.outputs.add(request_id, prompt_token_ids, params)
        finished = False
        try:
            while not finished:
                item = await q.get()
                if isinstance(item, Exception):
                    finished = True
                    raise item
                out, stopped = self.outputs.process(item)
                if stopped:  # a stop string ended it: the instance still runs it
                    self.router.abort(request_id)
                finished = out.finished
                yield out
        finally:
            self.outputs.forget(request_id)
            if not finished:
                self.router.abort(request_id)

    async def abort(self, request_id: str) -> None:
        self.router.abort(request_id)

    def cluster_state(self) -> dict:
        """Instances (role, pid, alive, stats, KV usage, in-flight transfers), transfer bytes, counters."""
        r = self.router
        moving = [t for t in r.by_tid.values() if t.stage in ("prefill", "cancel")]
        instances = []
        for idx, s in sorted(self.view.instances.items()):
            instances.append({
                "id": idx, "role": s.role, "pid": s.pid, "alive": s.alive,
                "kv_blocks_used": s.kv_blocks_used, "kv_blocks_total": s.kv_blocks_total,
                "kv_usage": round(s.kv_usage, 4), "inflight_requests": s.inflight_requests,
                "inflight_transfers": sum(1 for t in moving if idx in (t.p_idx, t.d_idx)),
                "shm_segment": self.shm_names.get(idx), "stats": dataclasses.asdict(s)})
        live = self.view.instances.values()
        c = r.counters
        return {
            "mode": self.config.mode,
            "transfer": self.config.transfer if self.config.mode == "disagg" else None,
            "instances": instances,
            "transfers": {"in_flight": len(moving), "started": c.transfers_started, "ok": c.transfers_ok,
                          "failed": c.transfers_failed, "lease_timeouts": c.lease_timeouts,
                          "bytes_pushed": sum(s.bytes_pushed for s in live),
                          "bytes_received": sum(s.bytes_received for s in live)},
            "router": {**dataclasses.asdict(c), "requests_in_flight": len(r.requests)},
            "prefix_cache": {"prompt_tokens": sum(s.prompt_tokens for s in live),
                             "hit_tokens": sum(s.prefix_hit_tokens for s in live)},
            "kv_store": None if self.config.kv_store is None else {
                "hit_tokens": sum(s.kv_store_hit_tokens for s in live),
                "loaded_bytes": sum(s.kv_store_loaded_bytes for s in live),
                "saved_bytes": sum(s.kv_store_saved_bytes for s in live),
                "failed_loads": sum(s.kv_store_failed_loads for s in live),
                "load_s": sum(s.kv_store_load_s for s in live),
                "load_wait_s": sum(s.kv_store_load_wait_s for s in live)},
        }

    async def collect_stats(self, timeout_s: float = 60.0) -> ClusterView:
        """Ask every live instance for fresh stats and wait for the answers (tests, dashboards)."""
        loop = asyncio.get_running_loop()
        futs = []
        for idx, s in self.view.instances.items():
            if s.alive:
                fut = loop.create_future()
                self._stats_waiters.setdefault(idx, []).append(fut)
                futs.append(fut)
                self._send(idx, m.GetStats())
        await asyncio.wait_for(asyncio.gather(*futs), timeout_s)
        return self.view

    # ----- loops -----

    def _send(self, idx: int, msg) -> None:
        fut = self._ctrl.send_multipart([f"i{idx}".encode(), self._enc.encode(msg)])
        fut.add_done_callback(_log_failure)

    def _identity(self, frames: list[bytes]) -> int | None:
        if len(frames) != 2 or not frames[0].startswith(b"i") or not frames[0][1:].isdigit():
            return None
        idx = int(frames[0][1:])
        return idx if idx in self.procs else None

    async def _recv_loop(self) -> None:
        while True:
            frames = await self._ctrl.recv_multipart()
            idx = self._identity(frames)
            if idx is None:
                continue
            try:
                msg = self._dec.decode(frames[1])
                if isinstance(msg, m.Stats):
                    self._update_stats(idx, msg.stats)
                    for fut in self._stats_waiters.pop(idx, []):
                        if not fut.done():
                            fut.set_result(None)
                elif not isinstance(msg, m.Hello):
                    self.router.on_message(idx, msg)
            except Exception:  # one bad message must not stop the router
                traceback.print_exc()

    async def _stats_loop(self) -> None:
        while True:
            raw = await self._stats.recv()
            try:
                s = self._stats_dec.decode(raw).stats
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            self._update_stats(s.instance_id, s)

    def _update_stats(self, idx: int, s: InstanceStats) -> None:
        if s.instance_id == idx:
            self.view.publish(s, time.monotonic())

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            try:
                now = time.monotonic()
                for idx, proc in self.procs.items():
                    s = self.view.get(idx)
                    if s.alive and (proc.poll() is not None or now - s.updated_at > self.config.dead_after_s):
                        if proc.poll() is None:
                            proc.kill()  # hung: make sure it can never write into anyone's KV again
                        self._mark_dead(idx)
                self.router.tick()
            except Exception:
                traceback.print_exc()

    def _mark_dead(self, idx: int) -> None:
        print(f"banaserve: instance {idx} ({self.view.get(idx).role}) is gone; re-routing its requests",
              file=sys.stderr)
        self.router.on_instance_dead(idx)
        for fut in self._stats_waiters.pop(idx, []):
            if not fut.done():
                fut.set_result(None)
        if idx in self.shm_names:
            shm_kv.unlink(self.shm_names[idx])
        hello = self.peers.get(idx)
        for addr in (hello.shm_addr, hello.tcp_addr) if hello else ():
            for other, s in self.view.instances.items():
                if addr and s.alive and s.role == "prefill":
                    self._send(other, m.DropPeer(addr))


def _log_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        print(f"banaserve: control send failed: {fut.exception()!r}", file=sys.stderr)
