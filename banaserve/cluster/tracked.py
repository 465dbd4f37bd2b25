"""Router-side records: one Tracked per client request, and the router's counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from banaserve.engine.outputs import TokenOutput
from banaserve.engine.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class Tracked:
    """Router-side state of one client request."""

    rid: str
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[TokenOutput | Exception], None]  # every output of the request, or its failure
    generated: list[int] = field(default_factory=list)
    attempt: int = 0
    aid: str = ""
    stage: str = "new"  # new | reserve | wait | prefill | cancel | run | done
    run_idx: int | None = None
    p_idx: int | None = None
    d_idx: int | None = None
    tid: int | None = None
    deadline: float = 0.0  # lease end of the current transfer
    retry_at: float = 0.0  # when a reservation refused for lack of room is asked again
    local: bool = False  # next dispatch prefills on the decode instance itself
    num_cached_tokens: int | None = None
    load: dict[int, list[int]] = field(default_factory=dict)  # instance -> [requests, prefill tokens]


@dataclass(slots=True)
class RouterCounters:
    dispatches: int = 0
    retries: int = 0  # re-dispatches after an instance died
    transfers_started: int = 0
    transfers_ok: int = 0
    transfers_failed: int = 0
    lease_timeouts: int = 0
    reserve_refusals: int = 0
    failed_requests: int = 0
