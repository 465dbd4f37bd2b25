"""Discrete-event simulation of a cluster: the live control plane on simulated time.

The live `Router` (cluster/router.py) routes every request and runs the PD flow (reserve,
prefill-only with a KV push, admit, leases, retries); each SimInstance runs the live instance's
InstanceHandler and engine core with a cost-model runner (instance.py). What differs from the
live cluster is the transport: messages are events on one heap of (time, seq, kind, payload),
delivered `control_latency_s` after they were sent, and instance stats reach the router's
ClusterView whenever they change instead of every publish interval.

An instance handles messages between steps (as the live loop drains its socket): one that
arrives during a step waits for its end. Idle instances that got work start a step once every
event of the current instant has been handled, so simultaneous arrivals share a step.
"""

from __future__ import annotations

import heapq
import itertools
import math

from banaserve.bench.prompts import PromptBuilder
from banaserve.bench.results import FAILED, RequestRecord
from banaserve.bench.spec import RequestSpec
from banaserve.cluster.messages import Outputs
from banaserve.cluster.router import Router
from banaserve.cluster.tracked import Tracked
from banaserve.engine.outputs import TokenOutput
from banaserve.engine.sampling_params import SamplingParams
from banaserve.policies.view import DECODE, PREFILL, ClusterView, InstanceStats
from banaserve.sim.cluster import COLOCATED, ClusterConfig, peers, router_config
from banaserve.sim.cost_model import CostModel
from banaserve.sim.instance import InstanceConfig, SimInstance
from banaserve.sim.links import Link
from banaserve.store.index import StoreIndex

STEP_END, DELIVER, TICK = 0, 1, 2
ROUTER = -1


class Simulator:
    """Replays request specs on a simulated cluster and returns one RequestRecord per spec."""

    def __init__(self, cluster: ClusterConfig, instance_cfg: InstanceConfig, cost: CostModel,
                 prompts: PromptBuilder, run_ahead: bool = True):
        cluster.validate()
        self.cfg = cluster
        self.now = 0.0  # the time of the event being handled
        self.end = 0.0  # the latest time reached
        self.neighbor_slowdown = cost.neighbor_slowdown
        # running one instance's steps ahead would hide which neighbours are mid-step; only colocated
        # instances are independent between arrivals (no message passes between them)
        self.run_ahead = run_ahead and cluster.mode == COLOCATED and not (
            self.neighbor_slowdown and cluster.num_instances > 1)
        self.prompts = prompts
        roles = cluster.roles()
        self.links = {i: Link(cluster.link_bandwidth, cluster.link_latency_s) for i, r in enumerate(roles)
                      if r == PREFILL}
        self.store = StoreIndex(cluster.kv_store_blocks) if cluster.kv_store_blocks else None
        self.instances = [SimInstance(i, r, instance_cfg, cost, self._to_router, self._clock, self.links.get(i),
                                      cluster.kv_bytes_per_token, cluster.num_layers, self.store,
                                      Link(cluster.store_bandwidth, cluster.store_latency_s))
                          for i, r in enumerate(roles)]
        self.prefill = [i for i in self.instances if i.role == PREFILL]
        self.decode = [i for i in self.instances if i.role == DECODE]
        self.view = ClusterView({i.id: InstanceStats(i.id, i.role) for i in self.instances})
        self.router = Router(router_config(cluster), self.view, self._to_instance,
                             peers(roles, instance_cfg), clock=self._clock)
        self.request_overhead_s = cost.request_overhead_s
        self.records: dict[str, RequestRecord] = {}
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = itertools.count()
        self.kicked: dict[int, SimInstance] = {}
        self.stale: set[int] = set()  # instances whose stats changed since the view last saw them
        self.tick_at: float | None = None
        self.num_events = 0

    def _clock(self) -> float:
        return self.now

    # ----- the transport -----

    def _to_instance(self, idx: int, msg: object) -> None:
        heapq.heappush(self.heap, (self.now + self.cfg.control_latency_s, next(self.seq), DELIVER, (idx, msg)))

    def _to_router(self, idx: int, msg: object) -> None:
        heapq.heappush(self.heap, (self.now + self.cfg.control_latency_s, next(self.seq), DELIVER,
                                   (ROUTER, (idx, msg))))

    def _deliver(self, dst: int, msg: object) -> None:
        if dst == ROUTER:
            if not isinstance(msg[1], Outputs):  # token outputs decide nothing
                self._publish()
            self.router.on_message(*msg)  # type: ignore[misc]
            return
        inst = self.instances[dst]
        inst.deliver(msg)
        self._changed(inst)

    def _changed(self, inst: SimInstance) -> None:
        """The instance's state changed: its stats are due; if idle with work, it steps."""
        self.stale.add(inst.id)
        if not inst.busy and inst.has_work():
            self.kicked[inst.id] = inst

    def _publish(self) -> None:
        """Bring the view up to date before the router decides anything. Live, stats arrive every
        50 ms; here they are exact at every decision, and taken only then: a snapshot walks the
        instance's free blocks, which per step would dominate a large simulation."""
        for idx in self.stale:
            self.view.publish(self.instances[idx].stats(), self.now)
        self.stale.clear()

    def _arm_tick(self) -> None:
        """Wake the router when it next has timed work (refused reservations, lease ends)."""
        if self.tick_at is None:
            t = self.router.next_tick_at()
            if t is not None:
                self.tick_at = max(t, self.now)
                heapq.heappush(self.heap, (self.tick_at, next(self.seq), TICK, None))

    # ----- the loop -----

    def run(self, specs: list[RequestSpec]) -> list[RequestRecord]:
        specs = sorted(specs, key=lambda s: s.arrival_s)
        # a request reaches the router after the front end's latency; its record keeps the arrival
        delay = self.request_overhead_s
        arrivals = [s.arrival_s + delay for s in specs] + [math.inf]
        heap = self.heap
        i, n = 0, len(specs)
        while True:
            if heap and heap[0][0] < arrivals[i]:
                now, _, kind, obj = heapq.heappop(heap)
                self.now = now
                if kind == STEP_END:
                    inst, started = obj  # type: ignore[misc]
                    self._step_end(inst, started, now)
                elif kind == DELIVER:
                    self._deliver(*obj)  # type: ignore[misc]
                else:
                    self.tick_at = None
                    self._publish()
                    self.router.tick()
            elif i < n:
                now = self.now = arrivals[i]
                self._arrive(specs[i])
                i += 1
            else:
                break
            self._arm_tick()
            self.num_events += 1
            self.end = max(self.end, now)
            if self.kicked:
                t_next = min(heap[0][0] if heap else math.inf, arrivals[i])
                if t_next > now:
                    self._start_kicked(now, arrivals[i] if self.run_ahead else now)
        return self._records(specs)

    def _start_kicked(self, now: float, horizon: float) -> None:
        kicked = list(self.kicked.values())
        self.kicked.clear()
        for inst in kicked:
            if not inst.busy:
                self._run_steps(inst, now, horizon)

    def _run_steps(self, inst: SimInstance, now: float, horizon: float) -> None:
        """Start `inst`'s next step at `now`; run its steps that end before `horizon` right here.

        Colocated instances touch only their own state when a step ends, and only an arrival
        (routing) reads or changes them, so with run-ahead their steps up to the next arrival need
        not go through the heap (their outputs still do, at the times they were sent)."""
        while True:
            self.now = now
            slowdown = self.neighbor_slowdown if self.neighbor_slowdown and any(
                o.busy for o in self.instances if o is not inst) else 0.0
            end = inst.begin_step(now, slowdown)
            if end is None:
                return
            if end >= horizon:
                heapq.heappush(self.heap, (end, next(self.seq), STEP_END, (inst, now)))
                return
            self.now = end
            self.end = max(self.end, end)
            self.num_events += 1
            inst.end_step(end, now)
            self.stale.add(inst.id)
            self.kicked.pop(inst.id, None)
            now = end

    def _step_end(self, inst: SimInstance, started: float, now: float) -> None:
        inst.end_step(now, started)
        self._changed(inst)

    # ----- requests -----

    def _arrive(self, spec: RequestSpec) -> None:
        now = self.now
        rid = str(spec.index)
        rec = RequestRecord(index=spec.index, arrival_s=spec.arrival_s, input_len=spec.input_len,
                            output_len=spec.output_len, send_s=spec.arrival_s, prompt_tokens=spec.input_len)
        self.records[rid] = rec
        reason = self.instances[0].fits(spec.input_len, spec.output_len)  # as the front end's check
        if reason is not None:
            rec.status, rec.error, rec.end_s = FAILED, f"HTTP 400: {reason}", now
            return
        tokens = self.prompts.token_ids(spec).tolist()
        params = SamplingParams(max_tokens=spec.output_len, ignore_eos=True)
        self._publish()
        self.router.submit(Tracked(rid, tokens, params, lambda o, rec=rec: self._on_output(rec, o)))

    def _on_output(self, rec: RequestRecord, o: TokenOutput | Exception) -> None:
        now = self.now
        if isinstance(o, Exception):
            rec.status, rec.error, rec.end_s = FAILED, str(o), now
            rec.output_tokens = len(rec.token_times_s)
            return
        if rec.first_token_s is None:
            rec.first_token_s = now
        rec.token_times_s.extend([now] * len(o.new_token_ids))
        if o.finished:
            rec.end_s = now
            rec.output_tokens = len(rec.token_times_s)

    # ----- results -----

    def _records(self, specs: list[RequestSpec]) -> list[RequestRecord]:
        out = []
        for spec in specs:
            rec = self.records[str(spec.index)]
            if rec.end_s is None:  # never finished (the cluster could not make room for it)
                rec.status, rec.error, rec.end_s = FAILED, "not finished when the simulation ended", self.end
                rec.output_tokens = len(rec.token_times_s)
            out.append(rec)
        return out

    def instance_summary(self) -> list[dict]:
        """Per-instance counters for the result's meta."""
        horizon = self.end or 1.0
        return [{"id": i.id, "role": i.role, "steps": i.num_steps, "busy_fraction": i.busy_s / horizon,
                 "preemptions": i.scheduler.num_preemptions, "num_blocks": i.cfg.num_blocks,
                 "kv_bytes_sent": self.links[i.id].bytes_sent if i.id in self.links else 0}
                for i in self.instances]
