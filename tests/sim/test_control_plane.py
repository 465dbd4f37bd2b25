"""The simulator runs the live control plane: a simulated disagg run sends the same messages,
request by request, through the same Router class as a live cluster serving the same requests."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from banaserve.bench.prompts import PromptBuilder, PromptConfig
from banaserve.bench.spec import RequestSpec
from banaserve.cluster import messages as m
from banaserve.cluster.router import Router
from banaserve.engine.sampling_params import SamplingParams
from banaserve.sim.cluster import ClusterConfig
from banaserve.sim.instance import InstanceConfig
from banaserve.sim.simulator import Simulator
from tests.cluster.cluster_harness import Harness, cluster_config
from tests.sim.helpers import LinearCost

NUM_REQUESTS = 20


class MessageLog:
    """Every message through a Router, as (direction, type) lists keyed by request index."""

    def __init__(self, router: Router):
        self.by_request: dict[int, list[str]] = defaultdict(list)
        self.tid_owner: dict[int, int] = {}
        send, on_message = router.send, router.on_message

        def logged_send(idx: int, msg) -> None:
            self.record("->", msg)
            send(idx, msg)

        def logged_on_message(idx: int, msg) -> None:
            self.record("<-", msg)
            on_message(idx, msg)

        router.send, router.on_message = logged_send, logged_on_message

    @staticmethod
    def index(rid: str) -> int:
        return int(rid.split("#")[0].lstrip("r"))

    def record(self, direction: str, msg) -> None:
        if isinstance(msg, m.Outputs):
            for o in msg.items:
                self.by_request[self.index(o.request_id)].append(f"{direction} Outputs")
            return
        if isinstance(msg, m.Reserve):
            self.tid_owner[msg.tid] = self.index(msg.rid)
        rid = getattr(msg, "rid", None)
        owner = self.index(rid) if rid is not None else self.tid_owner.get(getattr(msg, "tid", -1))
        if owner is not None:
            self.by_request[owner].append(f"{direction} {type(msg).__name__}")


def workload(seed: int = 3) -> list[tuple[int, int]]:
    """(prompt length, output length) pairs, one-token outputs among them."""
    rng = random.Random(seed)
    return [(rng.randrange(5, 120), 1 if i % 7 == 0 else rng.randrange(2, 12)) for i in range(NUM_REQUESTS)]


def live_log(model: str, lengths: list[tuple[int, int]]) -> MessageLog:
    h = Harness(cluster_config(model, mode="disagg", prefill=1, decode=1))
    try:
        log = MessageLog(h.client.router)
        rng = random.Random(0)

        async def run_all():
            async def one(i: int, n: int, out: int):
                prompt = [rng.randrange(3, 1000) for _ in range(n)]
                await h.collect(f"r{i}", prompt, SamplingParams(max_tokens=out, temperature=0.0, ignore_eos=True))
            await asyncio.gather(*[one(i, n, out) for i, (n, out) in enumerate(lengths)])

        h.run(run_all())
        h.quiesce()
        return log
    finally:
        h.close()


def sim_log(lengths: list[tuple[int, int]]) -> MessageLog:
    cluster = ClusterConfig(mode="disagg", num_prefill=1, num_decode=1, kv_bytes_per_token=1000, num_layers=4)
    sim = Simulator(cluster, InstanceConfig(num_blocks=1024, block_size=8, max_num_batched_tokens=64), LinearCost(),
                    PromptBuilder(PromptConfig()))
    log = MessageLog(sim.router)
    recs = sim.run([RequestSpec(i, 0.01 * i, n, out) for i, (n, out) in enumerate(lengths)])
    assert all(r.ok for r in recs)
    return log


def test_simulated_and_live_disagg_send_the_same_messages_per_request(tiny_llama):
    lengths = workload()
    live, sim = live_log(tiny_llama, lengths), sim_log(lengths)
    assert len(live.by_request) == len(sim.by_request) == NUM_REQUESTS
    for i in range(NUM_REQUESTS):
        assert live.by_request[i] == sim.by_request[i], i
    # the flows the comparison covers: a full PD hand-off, and a request that ends at its first token
    many = next(i for i, (_, out) in enumerate(lengths) if out > 1)
    n_out = lengths[many][1]
    assert sim.by_request[many] == ["-> Reserve", "<- Reserved", "-> Add", "<- PrefillDone", "-> Admit",
                                    *["<- Outputs"] * (n_out - 1)]
    assert sim.by_request[0] == ["-> Reserve", "<- Reserved", "-> Add", "<- PrefillDone", "-> Release"]
