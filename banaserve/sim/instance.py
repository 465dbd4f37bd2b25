"""A simulated instance: the real Scheduler and BlockManager, with step times from a cost model.

The step mirrors `LLMEngine.step`: schedule, run (here: advance the clock by the predicted step
time), commit, then append a token to every request whose last token was computed and stop it
at max_tokens or the context limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from banaserve.engine.request import Request, RequestStatus
from banaserve.engine.sampling_params import SamplingParams
from banaserve.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from banaserve.kv.block_manager import BlockManager
from banaserve.policies.view import DECODE, PREFILL, UNIFIED, InstanceStats
from banaserve.sim.cost_model import CostModel, batch_shape

OUTPUT_TOKEN = 1  # simulated tokens carry no meaning; any id works for the block hashes
ROOT_HASH = b"banaserve-sim"


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


class SimInstance:
    """One instance; the simulator calls begin_step / end_step and routes requests to it."""

    def __init__(self, id: int, role: str, cfg: InstanceConfig, cost: CostModel):
        if role not in (UNIFIED, PREFILL, DECODE):
            raise ValueError(f"unknown role {role!r}")
        cfg.validate()
        self.id, self.role, self.cfg, self.cost = id, role, cfg, cost
        self.blocks = BlockManager(cfg.num_blocks, cfg.block_size, ROOT_HASH, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_batched_tokens=cfg.max_num_batched_tokens, max_num_seqs=cfg.max_num_seqs,
            max_model_len=cfg.max_model_len, enable_chunked_prefill=cfg.enable_chunked_prefill,
        ), self.blocks)
        self.batch: ScheduledBatch | None = None
        self.step_start = 0.0
        self.busy_s = 0.0
        self.num_steps = 0
        self.last_step_s = 0.0
        # decode role: reservations waiting for their KV, and requests whose KV has arrived
        self.reserved: set[str] = set()
        self.admitting: deque[Request] = deque()
        self.reserve_queue: deque[tuple[Request, bool]] = deque()  # reservations sent, not yet handled

    @property
    def busy(self) -> bool:
        return self.batch is not None

    def fits(self, num_prompt_tokens: int, max_tokens: int) -> str | None:
        """Why a request can never run here (as LLMEngine.check_fits rejects it), or None."""
        cfg = self.cfg
        if num_prompt_tokens >= cfg.max_model_len:
            return (f"prompt has {num_prompt_tokens} tokens but the model's context is "
                    f"{cfg.max_model_len} tokens")
        worst = min(num_prompt_tokens + max_tokens, cfg.max_model_len)
        if self.blocks.blocks_for(worst) > cfg.num_blocks:
            return f"request needs up to {worst} tokens of KV memory but the instance holds " \
                   f"{cfg.num_blocks * cfg.block_size}"
        return None

    def add(self, req: Request) -> None:
        self.scheduler.add(req)

    # ----- stepping -----

    def begin_step(self, now: float) -> float | None:
        """Schedule a step at `now`; returns when it ends, or None when there is nothing to run."""
        sched = self.scheduler
        while self.admitting:  # as the live instance does between steps (Scheduler.add_running)
            sched.add_running(self.admitting.popleft())
        batch = sched.schedule()
        if not batch.requests:
            return None
        self.batch = batch
        self.step_start = now
        return now + self.cost.step_time(batch_shape(batch))

    def end_step(self, now: float) -> list[Request]:
        """Commit the running step; returns the requests that computed their last token (sampled)."""
        batch = self.batch
        assert batch is not None, "end_step without a step"
        self.scheduler.commit(batch)
        self.batch = None
        self.last_step_s = now - self.step_start
        self.busy_s += self.last_step_s
        self.num_steps += 1
        return [r for r in batch.requests if r.num_computed_tokens == len(r.all_token_ids)]

    def append_token(self, req: Request) -> bool:
        """Add a sampled token; finish the request (freeing its blocks) when it is done."""
        tokens = req.all_token_ids
        tokens.append(OUTPUT_TOKEN)
        n = len(tokens)
        if n - len(req.prompt_token_ids) >= req.params.max_tokens or n >= self.cfg.max_model_len:
            self.scheduler.finish(req, "length")
            return True
        return False

    # ----- disaggregation (mirrors cluster/decode_side.py and kv_connector.add_request_with_history) -----

    def reserve(self, request_id: str, prompt: list[int]) -> int | None:
        """Decode role: hold blocks for the prompt's KV, taking this instance's prefix-cache hit.

        Refused (None) when it would leave fewer free blocks than running requests (one block of
        headroom each, so reservations never force preemptions). Returns the tokens already here.
        """
        blocks = self.blocks
        cached, keys = blocks.find_cached_prefix(prompt)
        need = blocks.blocks_for(len(prompt)) - len(cached)
        if blocks.num_free_blocks - need < len(self.scheduler.running):
            return None
        if not blocks.allocate(request_id, len(prompt), cached, keys):
            return None
        self.reserved.add(request_id)
        return len(cached) * blocks.block_size

    def release(self, request_id: str) -> None:
        """Decode role: give a reservation back (the request ended on its prefill instance)."""
        self.reserved.discard(request_id)
        self.blocks.free(request_id)

    def admit(self, request_id: str, prompt: list[int], first_token: int, max_tokens: int) -> Request:
        """Decode role: the prompt's KV is in the reserved blocks; the request runs from the next step."""
        self.reserved.discard(request_id)
        req = Request(request_id, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        req.all_token_ids.append(first_token)
        req.num_computed_tokens = len(prompt)
        req.status = RequestStatus.RUNNING
        self.blocks.cache_computed(request_id, req.all_token_ids, len(prompt))
        self.admitting.append(req)
        return req

    # ----- load -----

    def stats(self) -> InstanceStats:
        """What this instance would publish, plus the live router's own in-flight counts.

        Simulated stats never lag, so the router-side counts are computed from the instance: the
        requests assigned here and not finished (reservations included), and the prompt tokens of
        those that have not produced a token here yet (the router drops them at the first output).
        """
        sched = self.scheduler
        queued = unprefilled = 0
        for reqs in (sched.waiting, sched.running):
            for r in reqs:
                queued += len(r.all_token_ids) - r.num_computed_tokens
                if len(r.all_token_ids) == len(r.prompt_token_ids):
                    unprefilled += len(r.prompt_token_ids)
        running = len(sched.running) + len(self.admitting)
        return InstanceStats(
            instance_id=self.id, role=self.role, num_waiting=len(sched.waiting), num_running=running,
            num_reserved=len(self.reserved), tokens_queued=queued, kv_blocks_used=self.blocks.num_used_blocks,
            kv_blocks_total=self.cfg.num_blocks, step_time_ms=self.last_step_s * 1e3, num_steps=self.num_steps,
            num_preemptions=sched.num_preemptions, inflight_prefill_tokens=unprefilled,
            inflight_requests=len(sched.waiting) + running + len(self.reserved) + len(self.reserve_queue),
        )
