"""Test helpers: a fixed workload, a sync harness around a started ClusterClient, result checks."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from banaserve.cluster.client import ClusterClient
from banaserve.cluster.config import ClusterConfig
from banaserve.cluster.tracked import Tracked
from banaserve.engine.config import EngineConfig
from banaserve.engine.outputs import RequestOutput
from banaserve.engine.sampling_params import SamplingParams
from banaserve.transfer.shm_kv import list_segments

# small blocks and a small token budget so prompts span many blocks and prefill in chunks
ENGINE = dict(dtype="float32", device="cpu", block_size=8, max_num_batched_tokens=64, num_kv_blocks=1024)
WAIT_S = 120.0  # upper bound for conditions that must become true (never asserted as a duration)


@dataclass(slots=True)
class Workload:
    prompts: list[list[int]]
    params: list[SamplingParams]
    reference: list[RequestOutput]


def make_workload(n: int = 32, seed: int = 0) -> tuple[list[list[int]], list[SamplingParams]]:
    """Half the prompts share a 40-token prefix (prefix-cache hits on both sides), lengths 5..150."""
    rng = random.Random(seed)
    shared = [rng.randrange(3, 1000) for _ in range(40)]
    prompts, params = [], []
    for i in range(n):
        tail = [rng.randrange(3, 1000) for _ in range(rng.randrange(5, 110))]
        prompts.append(shared + tail if i % 2 else tail)
        params.append(SamplingParams(max_tokens=rng.randrange(4, 40), temperature=0.0, ignore_eos=i % 3 != 0))
    return prompts, params


class Harness:
    """A started ClusterClient with its own event loop, usable from plain (sync) tests."""

    def __init__(self, config: ClusterConfig):
        self.loop = asyncio.new_event_loop()
        self.client = ClusterClient(config)
        self.run(self.client.start())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def collect(self, rid: str, prompt: list[int], params: SamplingParams,
                      stop_after: int | None = None) -> list[RequestOutput]:
        """All outputs of one request (or the first `stop_after`, then abandon it: an abort)."""
        outs = []
        gen = self.client.generate(rid, prompt, params)
        async for out in gen:
            outs.append(out)
            if stop_after is not None and len(outs) >= stop_after:
                break
        await gen.aclose()
        return outs

    def run_workload(self, w: Workload, prefix: str) -> list[list[RequestOutput]]:
        async def all_():
            return await asyncio.gather(*[self.collect(f"{prefix}{i}", p, sp)
                                          for i, (p, sp) in enumerate(zip(w.prompts, w.params, strict=True))])
        return self.run(all_())

    def quiesce(self) -> None:
        """Wait until the router holds no request, transfer or pending release, then refresh stats."""
        r = self.client.router
        deadline = time.monotonic() + WAIT_S
        while r.requests or r.by_tid or r.cancelling:
            assert time.monotonic() < deadline, "router did not settle"
            self.run(asyncio.sleep(0.01))
        self.run(self.client.collect_stats())

    def used_blocks(self) -> dict[int, int]:
        self.quiesce()
        return {i: s.kv_blocks_used for i, s in self.client.view.instances.items() if s.alive}

    def close(self) -> None:
        pids = [p.pid for p in self.client.procs.values()]
        segments = list(self.client.shm_names.values())
        self.run(self.client.shutdown())
        self.loop.close()
        for pid in pids:  # every instance process was reaped: none left running
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not set(segments) & set(list_segments(os.getpid())), "shared-memory segment leaked"


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait a while for whoever reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cluster_config(model: str, **kw) -> ClusterConfig:
    return ClusterConfig(engine=EngineConfig(model=model, **ENGINE), torch_threads=1, **kw)


def stream_killing_one(h: Harness, w: Workload, pick: Callable[[Tracked], bool]) -> tuple[list, list[int]]:
    """Stream every workload request; kill -9 the instance running the first request for which
    `pick` holds (checked after each output). Returns the streams and the killed instance ids."""
    client = h.client
    killed: list[int] = []

    async def one(i: int):
        rid = f"k{i}"
        outs = []
        async for out in client.generate(rid, w.prompts[i], w.params[i]):
            outs.append(out)
            t = client.router.requests.get(rid)
            if not killed and t is not None and pick(t):
                killed.append(t.run_idx)
                os.kill(client.view.get(t.run_idx).pid, signal.SIGKILL)
        return outs

    async def run():
        return await asyncio.gather(*[one(i) for i in range(len(w.prompts))])

    return h.run(run()), killed


def assert_matches(w: Workload, results: list[list[RequestOutput]]) -> None:
    for i, outs in enumerate(results):
        ref, last = w.reference[i], outs[-1]
        assert last.finished and last.finish_reason == ref.finish_reason, i
        assert last.token_ids == ref.token_ids, i
        assert last.text == ref.text, i
        # the stream is consistent: deltas add up to the final result
        assert [t for o in outs for t in o.new_token_ids] == ref.token_ids, i
        assert "".join(o.new_text for o in outs) == ref.text, i
