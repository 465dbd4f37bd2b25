"""A simulated instance: the live instance's control logic with a cost-model runner.

The engine core (Scheduler, BlockManager, stop rule) and the InstanceHandler (reservations,
admissions, prefill-only requests, aborts, outputs) are the live cluster's own objects. Two
parts differ: the runner, which samples a fixed token and reports how long the step would take
(the cost model), and the transport: messages go through the simulator's event queue and a
prefill instance's KV goes over a simulated link (SimPusher).

A step runs in two halves on simulated time: `begin_step` runs the core's step at once (nothing
can observe the instance mid-step: the live instance only handles messages between steps), holds
what it sends, and says when the step ends; `end_step` releases what it sent, then handles the
messages that arrived meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from banaserve.cluster.decode_side import DecodeSide
from banaserve.cluster.handler import InstanceHandler
from banaserve.cluster.stats import LoadMeter
from banaserve.engine.core import EngineCore
from banaserve.engine.kv_connector import MultiConnector
from banaserve.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from banaserve.kv.block_manager import BlockManager
from banaserve.policies.view import DECODE, PREFILL, UNIFIED, InstanceStats
from banaserve.sim.cost_model import CostModel, batch_shape
from banaserve.sim.links import Link
from banaserve.sim.pusher import SimPusher
from banaserve.sim.store import SimStoreConnector
from banaserve.store.index import StoreIndex

OUTPUT_TOKEN = 1  # simulated tokens carry no meaning; any id works for the block hashes
ROOT_HASH = b"banaserve-sim"
ADMIT_WAIT_S = 10.0  # as the live default (cluster/config.py); simulated transfers are written in place


@dataclass(slots=True)
class InstanceConfig:
    """Engine settings of one simulated instance (the EngineConfig knobs the scheduler sees)."""

    num_blocks: int
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True

    def validate(self) -> None:
        for name in ("num_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_model_len <= 1:
            raise ValueError(f"max_model_len must be > 1, got {self.max_model_len}")


class CostModelRunner:
    """The model runner of a simulated instance: every request whose last token is computed
    samples OUTPUT_TOKEN, and `step_s` is what the step would have taken."""

    def __init__(self, cost: CostModel):
        self.cost = cost
        self.step_s = 0.0
        self.num_steps = 0

    def execute(self, batch: ScheduledBatch, block_tables: dict[str, list[int]],
                before_layer: Callable[[int], None] | None = None,
                after_layer: Callable[[int], None] | None = None) -> dict[str, int]:
        self.step_s = self.cost.step_time(batch_shape(batch))
        self.num_steps += 1
        return {r.request_id: OUTPUT_TOKEN for r, n in zip(batch.requests, batch.num_tokens)
                if r.num_computed_tokens + n == r.num_tokens}


class SimInstance:
    """One instance. `send(msg)` hands a message to the transport (held while a step runs)."""

    def __init__(self, id: int, role: str, cfg: InstanceConfig, cost: CostModel,
                 send: Callable[[int, object], None], clock: Callable[[], float],
                 link: Link | None = None, kv_bytes_per_token: int = 0, num_layers: int = 1,
                 store: StoreIndex | None = None, store_link: Link | None = None):
        if role not in (UNIFIED, PREFILL, DECODE):
            raise ValueError(f"unknown role {role!r}")
        cfg.validate()
        self.id, self.role, self.cfg, self.cost = id, role, cfg, cost
        self.blocks = BlockManager(cfg.num_blocks, cfg.block_size, ROOT_HASH, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_batched_tokens=cfg.max_num_batched_tokens, max_num_seqs=cfg.max_num_seqs,
            max_model_len=cfg.max_model_len, enable_chunked_prefill=cfg.enable_chunked_prefill,
        ), self.blocks)
        self.runner = CostModelRunner(cost)
        self.core = EngineCore(self.scheduler, self.blocks, self.runner, cfg.max_model_len)
        self.pusher: SimPusher | None = None
        if role == PREFILL:
            self.pusher = SimPusher(link or Link(float("inf")), kv_bytes_per_token, num_layers)
        self.store: SimStoreConnector | None = None
        if store is not None:
            self.store = SimStoreConnector(store, store_link or Link(float("inf")),
                                           kv_bytes_per_token * cfg.block_size, cfg.block_size, num_layers,
                                           ROOT_HASH, clock)
        movers = [c for c in (self.store, self.pusher) if c is not None]  # loads before pushes, as live
        if movers:
            self.core.set_kv_connector(movers[0] if len(movers) == 1 else MultiConnector(movers))
        self._send = send
        self.meter = LoadMeter(clock)
        self.handler = InstanceHandler(id, role, 0, self.core, self._out, DecodeSide(self.core, None, ADMIT_WAIT_S,
                                                                                      clock), self.pusher, self.meter)
        self.busy = False
        self.held: list[object] = []  # sent during the running step: released when it ends
        self.inbox: list[object] = []  # arrived during the running step: handled when it ends
        self.busy_s = 0.0
        self.num_steps = 0

    def _out(self, msg: object) -> None:
        if self.busy:
            self.held.append(msg)
        else:
            self._send(self.id, msg)

    def deliver(self, msg: object) -> None:
        """A message from the router: handled now if idle, else when the running step ends."""
        if self.busy:
            self.inbox.append(msg)
        else:
            self.handler.handle(msg)

    def has_work(self) -> bool:
        return self.core.has_unfinished_requests()

    # ----- stepping -----

    def begin_step(self, now: float, slowdown: float = 0.0) -> float | None:
        """Run the next step from `now`; returns when it ends, or None when there is nothing to run.

        `slowdown` stretches the compute (neighbours sharing the host, see the cost model)."""
        if not self.core.has_unfinished_requests():
            return None
        self.busy = True
        ran = self.runner.num_steps
        self.handler.step()
        if self.runner.num_steps == ran:  # nothing could be scheduled (no free blocks)
            self.busy = False
            return None
        end = now + self.runner.step_s * (1.0 + slowdown)
        if self.store is not None:
            end = self.store.step_end(now, end)
        return self.pusher.push(now, end) if self.pusher is not None else end

    def end_step(self, now: float, started: float) -> None:
        """The step that began at `started` ends: release its messages, handle what arrived."""
        self.busy = False
        self.busy_s += now - started
        self.num_steps += 1
        self.meter.record(now - started)
        held, self.held = self.held, []
        for msg in held:
            self._send(self.id, msg)
        inbox, self.inbox = self.inbox, []
        for msg in inbox:
            self.handler.handle(msg)

    # ----- checks and load -----

    def fits(self, num_prompt_tokens: int, max_tokens: int) -> str | None:
        """Why a request can never run here (the live front end answers 400), or None."""
        try:
            self.core.check_fits(num_prompt_tokens, max_tokens)
        except ValueError as exc:
            return str(exc)
        return None

    def stats(self) -> InstanceStats:
        return self.handler.snapshot()
