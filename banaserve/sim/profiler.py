"""Measure the real engine's step time over a grid of batch shapes (for ProfileCostModel).

Each grid point is a step with one fresh prompt of P tokens plus B running decodes of context C,
timed around `LLMEngine.step()` so scheduling, input preparation, sampling and detokenization
(the Python overhead a live engine pays every step) are included. Decodes are set up the way a
decode instance receives a transferred request: blocks allocated, the prompt marked computed (the
KV content is irrelevant to the time), one output token appended. Each point keeps the mean of
its `repeats` steps, one per pass over the grid in shuffled order: the simulator predicts mean
latencies, and on a busy host the step times are skewed, so a median would be biased low.
"""

from __future__ import annotations

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
from banaserve.sim.model_configs import SimModel
from banaserve.sim.profile_table import ProfileTable, model_fields

FIRST_ID = 3  # token ids below are often special
WARM_DECODE_STEPS = 3


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
        self.chunk_times: dict[tuple[int, int], float] = {}

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

    def measure_chunk(self, tokens: int, start: int) -> float:
        """Seconds of a step running the last `tokens` of a prompt whose first `start` tokens an
        earlier, untimed step computed (chunked prefill under a token budget, or a prefix hit)."""
        eng = self.engine
        cfg = eng.scheduler.config
        budget = cfg.max_num_batched_tokens
        eng.add_request(prompt_token_ids=self._tokens(start + tokens), params=self.greedy)
        cfg.max_num_batched_tokens = start  # the first step takes exactly the earlier context
        try:
            eng.step()
        finally:
            cfg.max_num_batched_tokens = budget
        t = self._timed_step(0)
        while eng.has_unfinished_requests():
            eng.step()
        return t

    def measure(self, prefill: int, batch: int, context: int, repeats: int) -> float:
        """Seconds of a step with a `prefill`-token prompt and `batch` decodes at `context`.

        The decodes first run WARM_DECODE_STEPS untimed steps: live, a decode step follows other
        decode steps, with the weights and the decodes' pages warm in the caches. Timed right after
        setting up the decodes (and after whatever cell ran before, often a long prefill), a batch-1
        decode step took 7-8 ms where the live one takes 4.4, and only the fourth step in a row was
        warm (docs/design-decisions.md, "Simulator")."""
        ids = self._start_decodes(batch, context)
        try:
            for _ in range(WARM_DECODE_STEPS if batch else 0):
                self.engine.step()
            times = [self._timed_step(prefill) for _ in range(repeats)]
        finally:
            for rid in ids:
                self.engine.abort_request(rid)
            while self.engine.has_unfinished_requests():  # a prefill cut by the token budget
                self.engine.step()
        return statistics.fmean(times)

    def run(self, grid: ProfileGrid,
            progress: Callable[[str], None] | None = None) -> list[list[list[float]]]:
        """step_time_s[i][j][k] over the grid. Steps with neither prefill nor decodes are extrapolated.
        The later-chunk steps of `chunk_points` are timed alongside, into `self.chunk_times`.

        `grid.repeats` passes over the grid, each visiting every point once in a fresh shuffled
        order. A shared host's speed drifts by 10-20% over seconds: consecutive repeats of one
        point would all sample one moment's speed, and neighbouring points in a fixed order the
        same slow or fast spell. Spread over passes, every point averages the drift over the run.
        """
        for _ in range(grid.warmup):
            self.measure(grid.prefill_tokens[-1], grid.decode_batch[1], grid.context[-1], 1)
        P, B, C = grid.prefill_tokens, grid.decode_batch, grid.context
        # no decodes: the context does not apply, one measurement serves the whole C axis
        points: list[tuple[int, int, int]] = [
            (i, j, k) for i in range(len(P)) for j in range(len(B)) for k in range(len(C))
            if B[j] > 0 or (P[i] > 0 and k == 0)]
        chunks = chunk_points(grid, self.engine.scheduler.config.max_num_batched_tokens, self.engine.max_model_len)
        sums = dict.fromkeys(points + chunks, 0.0)
        keys = list(sums)
        for n in range(grid.repeats):
            for idx in self.rng.permutation(len(keys)):
                key = keys[idx]
                if key in chunks:
                    sums[key] += self.measure_chunk(*key)
                else:
                    i, j, k = key
                    sums[key] += self.measure(P[i], B[j], C[k], 1)
            if progress:
                progress(f"pass {n + 1}/{grid.repeats} over {len(keys)} points done")
        self.chunk_times = {key: sums[key] / grid.repeats for key in chunks}
        out = [[[0.0] * len(C) for _ in B] for _ in P]
        for i, j, k in points:
            out[i][j][k] = sums[i, j, k] / grid.repeats
        for i in range(1, len(P)):
            out[i][0] = [out[i][0][0]] * len(C)
        if progress:
            for i, p in enumerate(P):
                for j, b in enumerate(B):
                    cells = " ".join(f"{1000 * t:8.1f}" for t in out[i][j])
                    progress(f"prefill {p:>5} decodes {b:>4}: {cells} ms")
            for (n, start), t in self.chunk_times.items():
                progress(f"chunk of {n:>5} after {start:>5} earlier tokens: {1000 * t:8.1f} ms")
        # an empty step never runs, but interpolating just above it needs a value: extend the
        # decode-batch axis linearly down to 0 from its first two points
        for k in range(len(C)):
            t1, t2 = out[0][1][k], out[0][2][k]
            slope = (t2 - t1) / (B[2] - B[1])
            out[0][0][k] = max(t1 - slope * B[1], 0.0)
        return out


def chunk_points(grid: ProfileGrid, max_num_batched_tokens: int, max_model_len: int) -> list[tuple[int, int]]:
    """(chunk tokens, earlier context) pairs timed for the chunk-cost fit: two chunk sizes from the
    prefill axis after the first and last context of the grid, where one step can compute that
    context (it is set up by a step of exactly that many tokens) and the prompt fits the model."""
    sizes = [p for p in grid.prefill_tokens if p >= 2]
    tokens = sorted({sizes[len(sizes) // 3], sizes[(2 * len(sizes)) // 3]}) if sizes else []
    return [(n, start) for n in tokens for start in sorted({grid.context[0], grid.context[-1]})
            if start <= max_num_batched_tokens and start + n < max_model_len]


def _nonnegative_fit(rows: list[list[float]], y: list[float]) -> list[float]:
    """Least squares with every coefficient >= 0 (few unknowns: drop the negative ones and refit)."""
    active = list(range(len(rows[0])))
    while active:
        x = np.array([[r[c] for c in active] for r in rows], dtype=float)
        coef = np.linalg.lstsq(x, np.array(y, dtype=float), rcond=None)[0]
        if (coef >= 0).all():
            out = [0.0] * len(rows[0])
            for c, v in zip(active, coef, strict=True):
                out[c] = float(v)
            return out
        active = [c for c, v in zip(active, coef, strict=True) if v > 0] if (coef > 0).any() else []
    return [0.0] * len(rows[0])


def fit_chunk_cost(table: ProfileTable, chunk_times: dict[tuple[int, int], float]) -> dict[str, float]:
    """Attention costs for steps the grid's one fresh chunk does not describe (`chunk_cost` of a
    profile). pair_s: the grid's decode-free prefill steps fitted as a + b P + pair_s P(P+1)/2.
    entry_s, ctx_s: each timed later chunk's time beyond that of a fresh chunk of its size (minus
    the fresh chunk's causal attention), fitted to entry_s x tokens x context + ctx_s x context.
    Empty when the grid has too few prefill sizes to fit."""
    from banaserve.sim.profile_table import ProfileCostModel

    sizes = [(p, table.step_time_s[i][0][0]) for i, p in enumerate(table.prefill_tokens) if p > 0]
    if len(sizes) < 3 or not chunk_times:
        return {}
    _, _, pair_s = _nonnegative_fit([[1.0, p, p * (p + 1) / 2] for p, _ in sizes], [t for _, t in sizes])
    fresh = ProfileCostModel(table)
    rows, y = [], []
    for (n, start), t in chunk_times.items():
        ctx = start + n
        rows.append([n * ctx, ctx])
        y.append(t - fresh.lookup(n, 0, table.context[0]) + pair_s * n * (n + 1) / 2)
    entry_s, ctx_s = _nonnegative_fit(rows, y)
    return {"pair_s": pair_s, "entry_s": entry_s, "ctx_s": ctx_s}


def profile_engine(engine: LLMEngine, grid: ProfileGrid, threads: int, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> ProfileTable:
    """Measure `engine` over `grid` and describe the run (model shape, engine settings, device)."""
    # the shape the engine itself parsed, served in the dtype it ran
    model = SimModel(os.path.basename(os.path.normpath(engine.model_path)), engine.model_config,
                     engine.dtype.itemsize)
    cfg = engine.config
    started = time.time()
    profiler = Profiler(engine, seed)
    times = profiler.run(grid, progress)
    table = ProfileTable(
        prefill_tokens=list(grid.prefill_tokens), decode_batch=list(grid.decode_batch),
        context=list(grid.context), step_time_s=times,
        model=model_fields(model),
        engine={"block_size": engine.block_size, "num_kv_blocks": engine.num_blocks,
                "max_num_batched_tokens": cfg.max_num_batched_tokens, "max_num_seqs": cfg.max_num_seqs,
                "max_model_len": engine.max_model_len, "enable_prefix_caching": cfg.enable_prefix_caching,
                "enable_chunked_prefill": cfg.enable_chunked_prefill},
        meta={"device": str(engine.device), "dtype": str(engine.dtype).removeprefix("torch."),
              "threads": threads, "torch": torch.__version__, "host": platform.node(),
              "model_path": engine.model_path, "repeats": grid.repeats,
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "duration_s": round(time.time() - started, 1),
              "chunk_step_time_s": [[n, start, t] for (n, start), t in profiler.chunk_times.items()]},
    )
    table.chunk_cost = fit_chunk_cost(table, profiler.chunk_times)
    return table
