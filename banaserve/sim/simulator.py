"""Discrete-event loop over simulated instances and KV links.

Events are arrivals (from the sorted request specs), step ends and KV arrivals, kept in one heap
of (time, seq, kind, payload). Idle instances that got work start a step once every event of
the current instant has been handled, so simultaneous arrivals share a step as they would live.

Colocated: a request is routed to one unified instance and runs there start to end.
Disaggregated: the router picks a decode instance, which reserves blocks for the prompt's KV
(the request waits in that instance's reservation queue while it has too few free blocks); then a
prefill instance computes the prompt and the first token; the KV is pushed layer by layer over the
prefill instance's link as each step computes it; once it has arrived the decode instance admits
the request into its batch and decodes the rest.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque

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

STEP_END, KV_ARRIVED = 0, 1


class Simulator:
    """Replays request specs on a simulated cluster and returns one RequestRecord per spec."""

    def __init__(self, cluster: ClusterConfig, instance_cfg: InstanceConfig, cost: CostModel,
                 prompts: PromptBuilder, run_ahead: bool = True):
        cluster.validate()
        self.cfg = cluster
        self.run_ahead = run_ahead and cluster.mode == COLOCATED
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
        self.route_prefill = make_router(cluster.routing, PREFILL)
        self.route_decode = make_router(cluster.routing, DECODE)
        self.records: dict[str, RequestRecord] = {}
        self.prefill_of: dict[str, SimInstance] = {}
        self.decode_of: dict[str, SimInstance] = {}
        self.pending: dict[int, deque[Request]] = {d.id: deque() for d in self.decode}  # reservation queues
        self.kv_ready: dict[int, float] = {}  # prefill instance id -> when its last step's KV lands
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = itertools.count()
        self.kicked: dict[int, SimInstance] = {}
        self.now = 0.0
        self.num_events = 0

    # ----- the loop -----

    def run(self, specs: list[RequestSpec]) -> list[RequestRecord]:
        specs = sorted(specs, key=lambda s: s.arrival_s)
        arrivals = [s.arrival_s for s in specs] + [math.inf]
        heap, run_ahead = self.heap, self.run_ahead
        i, n = 0, len(specs)
        while True:
            if heap and heap[0][0] < arrivals[i]:
                now, _, kind, obj = heapq.heappop(heap)
                if kind == STEP_END:
                    self._step_end(obj, now)  # type: ignore[arg-type]
                else:
                    self._kv_arrived(obj, now)  # type: ignore[arg-type]
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
        kicked = list(self.kicked.values())
        self.kicked.clear()
        for inst in kicked:
            if inst.batch is None:
                self._run_steps(inst, now, horizon)

    def _run_steps(self, inst: SimInstance, now: float, horizon: float) -> None:
        """Start `inst`'s next step at `now`; run its steps that end before `horizon` right here."""
        while True:
            end = inst.begin_step(now)
            if end is None:
                return
            if end < now:
                end = now
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

    # ----- events -----

    def _arrive(self, spec: RequestSpec, now: float) -> None:
        rid = str(spec.index)
        rec = RequestRecord(index=spec.index, arrival_s=spec.arrival_s, input_len=spec.input_len,
                            output_len=spec.output_len, send_s=now, prompt_tokens=spec.input_len)
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
            return
        d = self.route_decode(self.decode)
        self.decode_of[rid] = d
        queue = self.pending[d.id]
        if queue or not d.reserve(req):
            queue.append(req)
        else:
            self._to_prefill(req)

    def _to_prefill(self, req: Request) -> None:
        p = self.route_prefill(self.prefill)
        self.prefill_of[req.request_id] = p
        p.add(req)
        self._kick(p)

    def _retry_reservations(self, d: SimInstance) -> None:
        queue = self.pending[d.id]
        while queue and d.reserve(queue[0]):
            self._to_prefill(queue.popleft())

    def _step_end(self, inst: SimInstance, now: float) -> None:
        if inst.role == PREFILL:
            self._push_kv(inst, now)
        sampled = inst.end_step(now)
        records = self.records
        freed = False
        for req in sampled:
            rec = records[req.request_id]
            if rec.first_token_s is None:
                rec.first_token_s = now
            rec.token_times_s.append(now)
            if inst.role == PREFILL:
                self._prefilled(inst, req, now)
            elif inst.append_token(req):
                rec.end_s = now
                rec.output_tokens = req.num_output_tokens
                freed = True
        if freed and inst.role == DECODE:
            self._retry_reservations(inst)
        self._kick(inst)

    def _push_kv(self, p: SimInstance, now: float) -> None:
        """Push the KV this step computed (and any prefix-cache hit it started from) over p's link."""
        batch = p.batch
        assert batch is not None
        tokens = 0
        for req, n in zip(batch.requests, batch.num_tokens, strict=True):
            start = req.num_computed_tokens  # not committed yet: the chunk's start
            tokens += n
            if start and start == req.num_cached_tokens:
                tokens += start  # cached prefix: already in memory, sent with the first chunk
        nbytes = tokens * self.cfg.kv_bytes_per_token
        self.kv_ready[p.id] = self.links[p.id].push_layerwise(p.step_start, now, nbytes, self.cfg.num_layers)

    def _prefilled(self, p: SimInstance, req: Request, now: float) -> None:
        """The prefill produced the first token: finish here or hand the request to its decode
        instance once its KV has arrived."""
        rid = req.request_id
        d = self.decode_of[rid]
        if p.append_token(req):  # max_tokens 1: done, nothing to transfer
            rec = self.records[rid]
            rec.end_s, rec.output_tokens = now, req.num_output_tokens
            del self.prefill_of[rid], self.decode_of[rid]
            d.blocks.free(rid)
            self._retry_reservations(d)
            return
        p.detach(req)
        heapq.heappush(self.heap, (self.kv_ready[p.id], next(self.seq), KV_ARRIVED, req))

    def _kv_arrived(self, req: Request, now: float) -> None:
        rid = req.request_id
        p = self.prefill_of.pop(rid)
        p.release(rid)
        self._kick(p)
        d = self.decode_of.pop(rid)
        d.admit_transferred(req)
        self._kick(d)

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
