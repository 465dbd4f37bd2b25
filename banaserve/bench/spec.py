"""The plain request spec shared by traces, the load generator and the simulator."""

from __future__ import annotations

from dataclasses import dataclass


class BenchError(ValueError):
    """Bad user input (unknown trace, bad distribution, missing file): reported in one line, exit 2."""


@dataclass(slots=True)
class RequestSpec:
    """One request to replay: when it arrives and how long it is.

    `arrival_s` is relative to the start of the run. `hash_ids` (Mooncake traces) name the prompt's
    blocks of `block_tokens` tokens: equal ids mean equal blocks, so shared prefixes survive replay.
    """

    index: int
    arrival_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] | None = None
    block_tokens: int = 512
