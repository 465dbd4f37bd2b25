"""Measure the real engine's step time over a grid of batch shapes (for ProfileCostModel).

Each grid point is a step with one fresh prompt of P tokens plus B running decodes of context C,
timed around `LLMEngine.step()` so scheduling, input preparation, sampling and detokenization
(the Python overhead a live engine pays every step) are included. Decodes are set up the way a
decode instance receives a transferred request: blocks allocated, the prompt marked computed (the
KV content is irrelevant to the time), one output token appended. Each point keeps the mean of
`repeats` steps: the simulator predicts mean latencies, and on a busy host the step times are
skewed, so a median would be biased low.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from banaserve.engine.llm_engine import LLMEngine
from banaserve.engine.request import RequestStatus
from banaserve.engine.sampling_params import SamplingParams
from banaserve.sim.model_configs import from_hf_config
from banaserve.sim.profile_table import ProfileTable

FIRST_ID = 3  # token ids below are often special


@dataclass(slots=True)
class ProfileGrid:
    prefill_tokens: list[int]
    decode_batch: list[int]
    context: list[int]
    repeats: int = 5
    warmup: int = 3

    def check(self, block_size: int, num_blocks: int, max_num_batched_tokens: int,
              max_model_len: int) -> None:
        """Every grid point must run as one step on this engine (ValueError otherwise)."""
        for name, axis in (("prefill tokens", self.prefill_tokens), ("decode batch", self.decode_batch),
                           ("context", self.context)):
            if len(axis) < 2 or any(b <= a for a, b in zip(axis[:-1], axis[1:], strict=True)) or axis[0] < 0:
                raise ValueError(f"{name} must be >= 2 increasing values >= 0")
        if self.prefill_tokens[0] != 0 or self.decode_batch[0] != 0:
            raise ValueError("prefill tokens and decode batch must start at 0")
        if len(self.decode_batch) < 3:
            raise ValueError("decode batch needs at least 0 and two sizes")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be >= 1 and warmup >= 0")
        if self.prefill_tokens[-1] + self.decode_batch[-1] > max_num_batched_tokens:
            raise ValueError(f"largest prefill + decode batch exceeds max_num_batched_tokens "
                             f"{max_num_batched_tokens}: the step would be split")
        if self.context[0] < 1 or self.context[-1] + self.repeats + 1 >= max_model_len:
            raise ValueError(f"contexts must be in [1, {max_model_len - self.repeats - 2}]")
        if self.prefill_tokens[-1] >= max_model_len:
            raise ValueError(f"prefill tokens must be < max_model_len {max_model_len}")
        ctx_blocks = -(-(self.context[-1] + self.repeats + 1) // block_size)
        need = self.decode_batch[-1] * ctx_blocks + -(-self.prefill_tokens[-1] // block_size) + 1
        if need > num_blocks:
            raise ValueError(f"largest grid point needs {need} KV blocks, the engine has {num_blocks} "
                             "(raise --kv-cache-gb or shrink the grid)")


DEFAULT_GRID = ProfileGrid([0, 32, 128, 256, 512, 1024, 1920], [0, 1, 2, 4, 8, 16, 32], [128, 512, 1536],
                           repeats=5)
QUICK_GRID = ProfileGrid([0, 64, 512, 1536], [0, 1, 8, 32], [256, 1024], repeats=2, warmup=2)


class Profiler:
    """Drives one LLMEngine through the grid's batch shapes."""

    def __init__(self, engine: LLMEngine, seed: int = 0):
        self.engine = engine
        self.rng = np.random.default_rng(seed)
        self.vocab = engine.model_config.vocab_size
        self.greedy = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)

    def _tokens(self, n: int) -> list[int]:
        return self.rng.integers(FIRST_ID, self.vocab, size=n).tolist()

    def _start_decodes(self, batch: int, context: int) -> list[str]:
        eng = self.engine
        params = SamplingParams(max_tokens=eng.max_model_len, temperature=0.0, ignore_eos=True)
        ids = [eng.add_request(prompt_token_ids=self._tokens(context), params=params) for _ in range(batch)]
        sched = eng.scheduler
        for rid in ids:
            req = eng.requests[rid]
            sched.waiting.remove(req)
            if not eng.blocks.allocate(rid, context):
                raise ValueError(f"{batch} decodes of {context} tokens do not fit the KV cache")
            self._write_blocks(eng.blocks.block_tables[rid])
            req.num_computed_tokens = context
            req.all_token_ids.append(int(self._tokens(1)[0]))
            req.status = RequestStatus.RUNNING
            sched.running.append(req)
        return ids

    def _write_blocks(self, blocks: list[int]) -> None:
        """Write the decodes' KV pages as a transfer or a prefill would have. Never-written pages
        cost a page fault on first use (on this VM ~1.5 s per GB), which a live decode does not
        pay: its prefill or KV transfer already touched them."""
        ids = torch.tensor(blocks, dtype=torch.int64, device=self.engine.device)
        for cache in self.engine.runner.kv_caches:
            cache.index_fill_(1, ids, 0.0)

    def _timed_step(self, prefill: int) -> float:
        eng = self.engine
        if prefill:
            eng.add_request(prompt_token_ids=self._tokens(prefill), params=self.greedy)
        t0 = time.perf_counter()
        eng.step()
        return time.perf_counter() - t0

    def measure(self, prefill: int, batch: int, context: int, repeats: int) -> float:
        """Seconds of a step with a `prefill`-token prompt and `batch` decodes at `context`."""
        ids = self._start_decodes(batch, context)
        try:
            times = [self._timed_step(prefill) for _ in range(repeats)]
        finally:
            for rid in ids:
                self.engine.abort_request(rid)
            while self.engine.has_unfinished_requests():  # a prefill cut by the token budget
                self.engine.step()
        return statistics.fmean(times)

    def run(self, grid: ProfileGrid,
            progress: Callable[[str], None] | None = None) -> list[list[list[float]]]:
        """step_time_s[i][j][k] over the grid. Steps with neither prefill nor decodes are extrapolated."""
        for _ in range(grid.warmup):
            self.measure(grid.prefill_tokens[-1], grid.decode_batch[1], grid.context[-1], 1)
        P, B, C = grid.prefill_tokens, grid.decode_batch, grid.context
        out = [[[0.0] * len(C) for _ in B] for _ in P]
        for i, p in enumerate(P):
            for j, b in enumerate(B):
                if b == 0:
                    if p == 0:
                        continue
                    t = self.measure(p, 0, C[0], grid.repeats)
                    out[i][j] = [t] * len(C)  # no decodes: context does not apply
                else:
                    for k, c in enumerate(C):
                        out[i][j][k] = self.measure(p, b, c, grid.repeats)
                if progress:
                    progress(f"prefill {p:>5} decodes {b:>4}: "
                             + " ".join(f"{1000 * t:8.1f}" for t in out[i][j]) + " ms")
        # an empty step never runs, but interpolating just above it needs a value: extend the
        # decode-batch axis linearly down to 0 from its first two points
        for k in range(len(C)):
            t1, t2 = out[0][1][k], out[0][2][k]
            slope = (t2 - t1) / (B[2] - B[1])
            out[0][0][k] = max(t1 - slope * B[1], 0.0)
        return out


def profile_engine(engine: LLMEngine, grid: ProfileGrid, threads: int, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> ProfileTable:
    """Measure `engine` over `grid` and describe the run (model shape, engine settings, device)."""
    with open(os.path.join(engine.model_path, "config.json")) as f:
        spec = from_hf_config(json.load(f), os.path.basename(os.path.normpath(engine.model_path)))
    spec.dtype_bytes = engine.dtype.itemsize
    cfg = engine.config
    started = time.time()
    times = Profiler(engine, seed).run(grid, progress)
    return ProfileTable(
        prefill_tokens=list(grid.prefill_tokens), decode_batch=list(grid.decode_batch),
        context=list(grid.context), step_time_s=times,
        model=dataclasses.asdict(spec),
        engine={"block_size": engine.block_size, "num_kv_blocks": engine.num_blocks,
                "max_num_batched_tokens": cfg.max_num_batched_tokens, "max_num_seqs": cfg.max_num_seqs,
                "max_model_len": engine.max_model_len, "enable_prefix_caching": cfg.enable_prefix_caching,
                "enable_chunked_prefill": cfg.enable_chunked_prefill},
        meta={"device": str(engine.device), "dtype": str(engine.dtype).removeprefix("torch."),
              "threads": threads, "torch": torch.__version__, "host": platform.node(),
              "model_path": engine.model_path, "repeats": grid.repeats,
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "duration_s": round(time.time() - started, 1)},
    )
