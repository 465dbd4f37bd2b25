"""A simulated instance: the real Scheduler and BlockManager, with step times from a cost model.

The step mirrors `LLMEngine.step`: schedule, run (here: advance the clock by the predicted step
time), commit, then append a token to every request whose last token was computed and stop it
at max_tokens or the context limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from banaserve.engine.request import Request, RequestStatus
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
        # decode role: requests whose KV has arrived into reserved blocks, waiting for a batch slot
        self.transferred: deque[Request] = deque()

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
        while self.transferred and len(sched.running) < self.cfg.max_num_seqs:
            req = self.transferred.popleft()
            req.status = RequestStatus.RUNNING
            sched.running.append(req)
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

    # ----- disaggregation -----

    def detach(self, req: Request) -> None:
        """Prefill role: stop scheduling a prefilled request but keep its blocks until the KV is sent."""
        self.scheduler.running.remove(req)
        req.status = RequestStatus.WAITING

    def release(self, request_id: str) -> None:
        """Free the blocks a detached request kept (its KV transfer is done)."""
        self.blocks.free(request_id)

    def reserve(self, req: Request) -> bool:
        """Decode role: take blocks for the prompt's KV before it is pushed here; False if short."""
        return self.blocks.allocate(req.request_id, req.num_prompt_tokens)

    def admit_transferred(self, req: Request) -> None:
        """Decode role: the prompt's KV is in the reserved blocks; run the request from here."""
        self.transferred.append(req)

    # ----- load -----

    def stats(self) -> InstanceStats:
        sched = self.scheduler
        queued = 0
        for r in sched.waiting:
            queued += r.num_tokens - r.num_computed_tokens
        for r in sched.running:
            if r.num_computed_tokens < r.num_prompt_tokens:
                queued += r.num_prompt_tokens - r.num_computed_tokens
        # simulated stats never lag, so the router-side "in flight" counts equal the engine's own
        waiting = len(sched.waiting) + len(self.transferred)
        return InstanceStats(
            instance_id=self.id, role=self.role, num_waiting=waiting, num_running=len(sched.running),
            num_reserved=len(self.transferred), tokens_queued=queued, inflight_prefill_tokens=queued,
            inflight_requests=waiting + len(sched.running), kv_blocks_used=self.blocks.num_used_blocks,
            kv_blocks_total=self.cfg.num_blocks, step_time_ms=self.last_step_s * 1e3,
        )
