"""Discrete-event loop over simulated instances and KV links.

Events are arrivals (from the sorted request specs), step ends and PD events (reservation retry
ticks, KV arrivals), kept in one heap of (time, seq, kind, payload). Idle instances that got work
start a step once every event of the current instant has been handled, so simultaneous arrivals
share a step as they would live.

Colocated: a request is routed to one unified instance and runs there start to end.
Disaggregated: the live router's PD flow, see pd.py.
"""

from __future__ import annotations

import heapq
import itertools
import math

from banaserve.bench.prompts import PromptBuilder
from banaserve.bench.results import FAILED, RequestRecord
from banaserve.bench.spec import RequestSpec
from banaserve.engine.request import Request
from banaserve.engine.sampling_params import SamplingParams
from banaserve.policies.view import DECODE, PREFILL, UNIFIED
from banaserve.sim.cluster import COLOCATED, ClusterConfig, make_router
from banaserve.sim.cost_model import CostModel
from banaserve.sim.instance import InstanceConfig, SimInstance
from banaserve.sim.links import Link
from banaserve.sim.pd import PDFlow

STEP_END, PD_EVENT = 0, 1


class Simulator:
    """Replays request specs on a simulated cluster and returns one RequestRecord per spec."""

    def __init__(self, cluster: ClusterConfig, instance_cfg: InstanceConfig, cost: CostModel,
                 prompts: PromptBuilder, run_ahead: bool = True):
        cluster.validate()
        self.cfg = cluster
        self.neighbor_slowdown = cost.neighbor_slowdown
        # running one instance's steps ahead would hide which neighbours are mid-step
        self.run_ahead = run_ahead and cluster.mode == COLOCATED and not (
            self.neighbor_slowdown and cluster.num_instances > 1)
        self.prompts = prompts
        if cluster.mode == COLOCATED:
            self.unified = [SimInstance(i, UNIFIED, instance_cfg, cost) for i in range(cluster.num_instances)]
            self.prefill: list[SimInstance] = []
            self.decode: list[SimInstance] = []
        else:
            self.unified = []
            self.prefill = [SimInstance(i, PREFILL, instance_cfg, cost) for i in range(cluster.num_prefill)]
            n = cluster.num_prefill
            self.decode = [SimInstance(n + i, DECODE, instance_cfg, cost) for i in range(cluster.num_decode)]
        self.instances = self.unified + self.prefill + self.decode
        self.links = {p.id: Link(cluster.link_bandwidth, cluster.link_latency_s) for p in self.prefill}
        self.route_unified = make_router(cluster.routing, UNIFIED)
        # the live router picks prefill and decode instances least-loaded whatever --routing says
        self.pd = PDFlow(self.prefill, self.decode, self.links, make_router("least_loaded", PREFILL),
                         make_router("least_loaded", DECODE), cluster.kv_bytes_per_token, cluster.num_layers,
                         cluster.reserve_retry_s, self._kick, self._schedule_pd)
        self.request_overhead_s = cost.request_overhead_s
        self.records: dict[str, RequestRecord] = {}
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = itertools.count()
        self.kicked: dict[int, SimInstance] = {}
        self.now = 0.0
        self.num_events = 0

    # ----- the loop -----

    def run(self, specs: list[RequestSpec]) -> list[RequestRecord]:
        specs = sorted(specs, key=lambda s: s.arrival_s)
        # a request reaches the router after the front end's latency; its record keeps the arrival
        delay = self.request_overhead_s
        arrivals = [s.arrival_s + delay for s in specs] + [math.inf]
        heap, run_ahead = self.heap, self.run_ahead
        i, n = 0, len(specs)
        while True:
            if heap and heap[0][0] < arrivals[i]:
                now, _, kind, obj = heapq.heappop(heap)
                if kind == STEP_END:
                    self._step_end(obj, now)  # type: ignore[arg-type]
                elif obj is None:
                    self.pd.tick(now)
                else:
                    self.pd.admit(obj)  # type: ignore[arg-type]
            elif i < n:
                now = arrivals[i]
                self._arrive(specs[i], now)
                i += 1
            else:
                break
            self.num_events += 1
            if now > self.now:
                self.now = now
            if self.kicked:
                t_next = heap[0][0] if heap else math.inf
                if arrivals[i] < t_next:
                    t_next = arrivals[i]
                if t_next > now:
                    # Colocated instances touch only their own state when a step ends, and only an
                    # arrival (routing) reads or changes them: steps ending before the next arrival
                    # can run back to back without the heap. Disaggregated instances interact at
                    # any event, so every step goes through the heap.
                    self._start_kicked(now, arrivals[i] if run_ahead else now)
        return self._records(specs)

    def _start_kicked(self, now: float, horizon: float) -> None:
        while self.kicked:  # starting one instance can hand work to another (disagg reservations)
            kicked = list(self.kicked.values())
            self.kicked.clear()
            for inst in kicked:
                if inst.batch is None:
                    self._run_steps(inst, now, horizon)

    def _run_steps(self, inst: SimInstance, now: float, horizon: float) -> None:
        """Start `inst`'s next step at `now`; run its steps that end before `horizon` right here."""
        while True:
            if inst.reserve_queue:
                self.pd.decode_boundary(inst, now)
            end = inst.begin_step(now)
            if end is None:
                return
            if end < now:
                end = now
            if self.neighbor_slowdown and any(o.busy for o in self.instances if o is not inst):
                # judged at the step's start: under load the neighbour is busy for most of it
                end = now + (end - now) * (1.0 + self.neighbor_slowdown)
            if inst.role == PREFILL:
                end = self.pd.push(inst, now, end)
            if end >= horizon:
                heapq.heappush(self.heap, (end, next(self.seq), STEP_END, inst))
                return
            self._step_end(inst, end)
            self.kicked.pop(inst.id, None)
            self.num_events += 1
            if end > self.now:
                self.now = end
            now = end

    def _kick(self, inst: SimInstance) -> None:
        self.kicked[inst.id] = inst

    def _schedule_pd(self, time: float, payload: object) -> None:
        heapq.heappush(self.heap, (time, next(self.seq), PD_EVENT, payload))

    # ----- events -----

    def _arrive(self, spec: RequestSpec, now: float) -> None:
        rid = str(spec.index)
        rec = RequestRecord(index=spec.index, arrival_s=spec.arrival_s, input_len=spec.input_len,
                            output_len=spec.output_len, send_s=spec.arrival_s, prompt_tokens=spec.input_len)
        self.records[rid] = rec
        first = self.instances[0]  # every instance of a run has the same limits
        reason = first.fits(spec.input_len, spec.output_len)
        if reason is not None:
            rec.status, rec.error, rec.end_s = FAILED, f"HTTP 400: {reason}", now
            return
        tokens = self.prompts.token_ids(spec).tolist()
        req = Request(rid, tokens, SamplingParams(max_tokens=spec.output_len, ignore_eos=True),
                      arrival_time=now)
        if self.cfg.mode == COLOCATED:
            inst = self.route_unified(self.unified)
            inst.add(req)
            self._kick(inst)
        else:
            self.pd.arrive(req)

    def _step_end(self, inst: SimInstance, now: float) -> None:
        sampled = inst.end_step(now)
        records = self.records
        prefill = inst.role == PREFILL
        for req in sampled:
            rec = records[req.request_id]
            if rec.first_token_s is None:
                rec.first_token_s = now
            rec.token_times_s.append(now)
            done = self.pd.prefilled(inst, req, now) if prefill else inst.append_token(req)
            if done:
                rec.end_s = now
                rec.output_tokens = len(rec.token_times_s)
        if inst.role == DECODE:
            self.pd.decode_changed = True
        self._kick(inst)

    # ----- results -----

    def _records(self, specs: list[RequestSpec]) -> list[RequestRecord]:
        out = []
        for spec in specs:
            rec = self.records[str(spec.index)]
            if rec.end_s is None:  # never finished (the cluster could not make room for it)
                rec.status, rec.error, rec.end_s = FAILED, "not finished when the simulation ended", self.now
                rec.output_tokens = len(rec.token_times_s)
            out.append(rec)
        return out

    def instance_summary(self) -> list[dict]:
        """Per-instance counters for the result's meta."""
        horizon = self.now or 1.0
        return [{"id": i.id, "role": i.role, "steps": i.num_steps, "busy_fraction": i.busy_s / horizon,
                 "preemptions": i.scheduler.num_preemptions, "num_blocks": i.cfg.num_blocks,
                 "kv_bytes_sent": self.links[i.id].bytes_sent if i.id in self.links else 0}
                for i in self.instances]
