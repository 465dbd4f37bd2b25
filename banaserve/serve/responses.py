"""Shapes of OpenAI responses: full bodies and stream chunks, for completions and chat."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from banaserve.engine.outputs import RequestOutput
from banaserve.engine.sampling_params import SamplingParams
from banaserve.serve.state import ServerState


@dataclass(slots=True)
class Job:
    """A validated request, ready for the engine."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    chat: bool  # chat.completion(.chunk) shapes instead of text_completion
    include_usage: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # set when the server drains
    created: int = field(default_factory=lambda: int(time.time()))


def usage(job: Job, num_output_tokens: int) -> dict:
    """OpenAI's usage object."""
    n = len(job.prompt_token_ids)
    return {"prompt_tokens": n, "completion_tokens": num_output_tokens, "total_tokens": n + num_output_tokens}


def envelope(state: ServerState, job: Job, obj: str, choices: list[dict]) -> dict:
    """The fields every response and chunk of a request shares."""
    return {"id": job.request_id, "object": obj, "created": job.created, "model": state.model_name,
            "choices": choices}


def chunk(state: ServerState, job: Job, text: str | None, finish_reason: str | None,
          role: bool = False) -> dict:
    """One stream chunk; `role` makes the opening chat chunk (role, empty content)."""
    if job.chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        out = envelope(state, job, "chat.completion.chunk", [choice])
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        out = envelope(state, job, "text_completion", [choice])
    if job.include_usage:
        out["usage"] = None  # as OpenAI: only the extra last chunk carries usage
    return out


def full_response(state: ServerState, job: Job, out: RequestOutput) -> dict:
    """The non-streaming response body."""
    if job.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text}, "logprobs": None,
                  "finish_reason": out.finish_reason}
        body = envelope(state, job, "chat.completion", [choice])
    else:
        choice = {"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}
        body = envelope(state, job, "text_completion", [choice])
    body["usage"] = usage(job, len(out.token_ids))
    return body


def usage_chunk(state: ServerState, job: Job, num_output_tokens: int) -> dict:
    """The extra last chunk of `stream_options.include_usage`: no choices, only usage."""
    obj = "chat.completion.chunk" if job.chat else "text_completion"
    return {**envelope(state, job, obj, []), "usage": usage(job, num_output_tokens)}
