"""What the engine returns: token outputs from the core, request outputs (with text) to callers."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec


class TokenOutput(msgspec.Struct, array_like=True):
    """One step's progress of a request in token ids: what the engine core emits and what crosses
    process boundaries (msgpack, as a compact array). Text is made from it by the front end."""

    request_id: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "length" | "stop" | "abort"
    num_cached_tokens: int = 0
    num_preemptions: int = 0


@dataclass(slots=True)
class RequestOutput:
    """A request's progress after a step: cumulative tokens/text plus what this step added."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "length" | "stop" | "abort"
    num_cached_tokens: int = 0
    num_preemptions: int = 0
