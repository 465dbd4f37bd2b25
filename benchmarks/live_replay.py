"""In-process live replay: real engines driven in real time by a trace slice's arrival times.

A stand-in for `banaserve serve` + `banaserve bench` until the server exists, used by
sim_fidelity.py. Records are bench RequestRecords; the scheduled arrival is the send time (an
on-time client whose request the engine picks up at its next step, as a server would).

Colocated: one engine, one loop: add the requests that are due, step, record the tokens.
Disaggregated 1P+1D: one thread per engine. At arrival the decode engine reserves blocks for
the prompt (or the request waits for them), then the prefill engine computes the prompt and the
first token, copies the prompt's KV into the reserved blocks (the link), and the decode engine
admits the request into its batch and decodes the rest — the policy the simulator models.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from banaserve.bench.prompts import PromptBuilder
from banaserve.bench.results import RequestRecord
from banaserve.bench.spec import RequestSpec
from banaserve.engine.llm_engine import LLMEngine
from banaserve.engine.request import RequestStatus
from banaserve.engine.sampling_params import SamplingParams
from banaserve.sim.cost_model import BatchShape, batch_shape


def params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def new_record(spec: RequestSpec) -> RequestRecord:
    return RequestRecord(index=spec.index, arrival_s=spec.arrival_s, input_len=spec.input_len,
                         output_len=spec.output_len, send_s=spec.arrival_s, prompt_tokens=spec.input_len)


def note_tokens(rec: RequestRecord, t: float, n: int, finished: bool, total: int) -> None:
    if rec.first_token_s is None:
        rec.first_token_s = t
    rec.token_times_s.extend([t] * n)
    if finished:
        rec.end_s, rec.output_tokens = t, total


class StepLog:
    """Shape and measured duration of every step an engine runs (to check a cost model step by step)."""

    def __init__(self, engine: LLMEngine):
        self.steps: list[tuple[BatchShape, float]] = []
        self.shape: BatchShape | None = None
        schedule = engine.scheduler.schedule

        def logged_schedule():
            batch = schedule()
            self.shape = batch_shape(batch) if batch.requests else None
            return batch

        engine.scheduler.schedule = logged_schedule  # the shape must be taken before commit

    def done(self, seconds: float) -> None:
        if self.shape is not None:
            self.steps.append((self.shape, seconds))
            self.shape = None


def replay_colocated(engine: LLMEngine, specs: list[RequestSpec], prompts: PromptBuilder,
                     log: StepLog | None = None) -> list[RequestRecord]:
    """Replay `specs` on one engine in real time."""
    todo = deque(sorted(specs, key=lambda s: s.arrival_s))
    records = {str(s.index): new_record(s) for s in specs}
    t0 = time.perf_counter()
    while todo or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while todo and todo[0].arrival_s <= now:
            s = todo.popleft()
            engine.add_request(str(s.index), prompt_token_ids=prompts.token_ids(s).tolist(),
                               params=params(s.output_len))
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, todo[0].arrival_s - (time.perf_counter() - t0)))
            continue
        start = time.perf_counter()
        outputs = engine.step()
        t = time.perf_counter() - t0
        if log is not None:
            log.done(time.perf_counter() - start)
        for out in outputs:
            note_tokens(records[out.request_id], t, len(out.new_token_ids), out.finished, len(out.token_ids))
    return [records[str(s.index)] for s in specs]


def locked_step(engine: LLMEngine, lock: threading.Lock, keep_tables: bool = False,
                log: StepLog | None = None):
    """LLMEngine.step with the scheduler and block pool touched only under `lock` (the forward runs
    outside it, so another thread can reserve blocks meanwhile). Returns (outputs, block tables of
    the requests that sampled, taken before a finish frees them)."""
    start = time.perf_counter()
    with lock:
        batch = engine.scheduler.schedule()
        if not batch.requests:
            return [], {}
    sampled = engine.runner.execute(batch, engine.blocks.block_tables)
    with lock:
        tables = {rid: list(engine.blocks.block_tables[rid]) for rid in sampled} if keep_tables else {}
        engine.scheduler.commit(batch)
        outputs = []
        for req in batch.requests:
            token = sampled.get(req.request_id)
            if token is not None:
                req.all_token_ids.append(token)
                outputs.append(engine._advance(req, token))
    if log is not None:
        log.done(time.perf_counter() - start)
    return outputs, tables


class DisaggReplay:
    """1 prefill + 1 decode engine in two threads; see the module docstring."""

    def __init__(self, prefill: LLMEngine, decode: LLMEngine, prompts: PromptBuilder):
        self.p, self.d, self.prompts = prefill, decode, prompts
        self.p_log, self.d_log = StepLog(prefill), StepLog(decode)
        self.p_lock, self.d_lock = threading.Lock(), threading.Lock()
        self.p_wake, self.d_wake = threading.Event(), threading.Event()
        self.pending: deque[RequestSpec] = deque()  # waiting for decode blocks
        self.transferred: deque[tuple[RequestSpec, list[int], int]] = deque()  # KV copied, to admit
        self.records: dict[str, RequestRecord] = {}
        self.specs: dict[str, RequestSpec] = {}
        self.left = 0
        self.copy_s = 0.0
        self.copy_bytes = 0
        self.t0 = 0.0
        self.error: BaseException | None = None

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def run(self, specs: list[RequestSpec]) -> list[RequestRecord]:
        self.records = {str(s.index): new_record(s) for s in specs}
        self.specs = {str(s.index): s for s in specs}
        self.left = len(specs)
        threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                   for f in (self._prefill_loop, self._decode_loop)]
        self.t0 = time.perf_counter()
        for t in threads:
            t.start()
        for s in sorted(specs, key=lambda s: s.arrival_s):
            time.sleep(max(0.0, s.arrival_s - self.now()))
            with self.d_lock:
                self.pending.append(s)
                self._reserve()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error
        return [self.records[str(s.index)] for s in specs]

    def _guard(self, loop) -> None:
        try:
            loop()
        except BaseException as e:  # surface a thread's failure in run()
            self.error = e
            self.left = 0
            self.p_wake.set()
            self.d_wake.set()

    def _reserve(self) -> None:
        """Under d_lock: reserve decode blocks for waiting requests in order, send them to prefill."""
        while self.pending and self.d.blocks.allocate(str(self.pending[0].index), self.pending[0].input_len):
            s = self.pending.popleft()
            with self.p_lock:
                self.p.add_request(str(s.index), prompt_token_ids=self.prompts.token_ids(s).tolist(),
                                   params=params(1))
            self.p_wake.set()

    def _prefill_loop(self) -> None:
        while self.left:
            if not self.p.has_unfinished_requests():
                self.p_wake.wait(0.05)
                self.p_wake.clear()
                continue
            outputs, tables = locked_step(self.p, self.p_lock, keep_tables=True, log=self.p_log)
            t = self.now()
            for out in outputs:
                rid, spec = out.request_id, self.specs[out.request_id]
                rec = self.records[rid]
                if spec.output_len == 1:
                    note_tokens(rec, t, 1, True, 1)
                    with self.d_lock:
                        self.d.blocks.free(rid)
                        self.left -= 1
                        self._reserve()
                    continue
                note_tokens(rec, t, 1, False, 1)
                self._copy_kv(rid, tables[rid], spec.input_len)
                with self.d_lock:
                    self.transferred.append((spec, out.prompt_token_ids, out.token_ids[0]))
                self.d_wake.set()

    def _copy_kv(self, rid: str, p_table: list[int], num_tokens: int) -> None:
        """The link: copy the prompt's KV from the prefill blocks into the reserved decode blocks."""
        n = self.p.blocks.blocks_for(num_tokens)
        start = time.perf_counter()
        d_table = self.d.blocks.block_tables[rid][:n]
        for src, dst in zip(self.p.runner.kv_caches, self.d.runner.kv_caches, strict=True):
            dst[:, d_table] = src[:, p_table[:n]]
        self.copy_s += time.perf_counter() - start
        self.copy_bytes += num_tokens * self.p.model_config.kv_bytes_per_token(self.p.dtype.itemsize)

    def _admit(self) -> None:
        """Under d_lock: run transferred requests on the decode engine (its KV is in place)."""
        d, sched = self.d, self.d.scheduler
        while self.transferred and len(sched.running) < d.config.max_num_seqs:
            spec, prompt, first = self.transferred.popleft()
            rid = str(spec.index)
            d.add_request(rid, prompt_token_ids=prompt, params=params(spec.output_len))
            req = d.requests[rid]
            sched.waiting.remove(req)
            req.all_token_ids.append(first)
            req.num_computed_tokens = spec.input_len
            req.status = RequestStatus.RUNNING
            sched.running.append(req)

    def _decode_loop(self) -> None:
        while self.left:
            with self.d_lock:
                self._admit()
            if not self.d.has_unfinished_requests():
                self.d_wake.wait(0.05)
                self.d_wake.clear()
                continue
            outputs, _ = locked_step(self.d, self.d_lock, log=self.d_log)
            t = self.now()
            finished = 0
            for out in outputs:
                note_tokens(self.records[out.request_id], t, len(out.new_token_ids), out.finished,
                            len(out.token_ids))
                finished += out.finished
            if finished:
                with self.d_lock:
                    self.left -= finished
                    self._reserve()
