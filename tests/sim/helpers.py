"""A transparent cost model and small builders for simulator tests."""

from __future__ import annotations

from dataclasses import dataclass

from banaserve.bench.prompts import PromptBuilder, PromptConfig
from banaserve.bench.spec import RequestSpec
from banaserve.sim.cluster import ClusterConfig
from banaserve.sim.cost_model import BatchShape
from banaserve.sim.instance import InstanceConfig
from banaserve.sim.simulator import Simulator


@dataclass(slots=True)
class LinearCost:
    """base + per prefill token + per decode row: easy to compute by hand."""

    base: float = 0.010
    per_prefill_token: float = 0.001
    per_decode: float = 0.002
    request_overhead_s: float = 0.0
    neighbor_slowdown: float = 0.0

    def step_time(self, s: BatchShape) -> float:
        return self.base + self.per_prefill_token * s.prefill_tokens + self.per_decode * s.decode_seqs


def spec(index: int, arrival: float, input_len: int, output_len: int, hash_ids=None) -> RequestSpec:
    return RequestSpec(index=index, arrival_s=arrival, input_len=input_len, output_len=output_len,
                       hash_ids=hash_ids, block_tokens=32)


def simulator(cluster: ClusterConfig | None = None, cost=None, run_ahead: bool = True,
              **instance) -> Simulator:
    cfg = InstanceConfig(**{"num_blocks": 1000, "block_size": 16, **instance})
    return Simulator(cluster or ClusterConfig(), cfg, cost or LinearCost(), PromptBuilder(PromptConfig()),
                     run_ahead=run_ahead)
