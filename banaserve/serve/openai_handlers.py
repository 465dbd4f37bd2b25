"""POST /v1/completions and /v1/chat/completions: body -> validated Job -> stream or JSON.

Everything a client can get wrong is checked here, before the engine sees the request and
before a stream starts, so errors always come back as a 4xx JSON body.
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from banaserve.engine.sampling_params import SamplingParams
from banaserve.serve.errors import APIError, from_validation_error
from banaserve.serve.generate import collect, stream_events
from banaserve.serve.protocol import ChatCompletionRequest, CompletionRequest
from banaserve.serve.responses import Job, full_response
from banaserve.serve.sse import SSEResponse
from banaserve.serve.state import ServerState, read_json

COMPLETION_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions API


async def create_completion(state: ServerState, request: Request) -> Response:
    body = await read_json(request, state.args.max_body_bytes)
    req = _parse(CompletionRequest, body)
    state.check_model(req.model)
    req.check()
    prompt = req.single_prompt()
    ids = await state.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    max_tokens = _max_tokens(state, len(ids), req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, "prompt")
    job = Job(f"cmpl-{uuid.uuid4().hex}", ids, _params(req, max_tokens), chat=False,
              include_usage=req.include_usage)
    return await _run(state, request, job, req.stream)


async def create_chat_completion(state: ServerState, request: Request) -> Response:
    body = await read_json(request, state.args.max_body_bytes)
    req = _parse(ChatCompletionRequest, body)
    state.check_model(req.model)
    req.check()
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    text = state.chat.render(messages, req.add_generation_prompt)
    ids = await state.tokenize(text)
    max_tokens = _max_tokens(state, len(ids), req.requested_max_tokens, None, "messages")
    job = Job(f"chatcmpl-{uuid.uuid4().hex}", ids, _params(req, max_tokens), chat=True,
              include_usage=req.include_usage)
    return await _run(state, request, job, req.stream)


def _parse(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _max_tokens(state: ServerState, num_prompt: int, requested: int | None, default: int | None,
                prompt_param: str) -> int:
    """The request's max_tokens, refused (not clipped) when it cannot fit the context."""
    limit = state.client.model_info.max_model_len
    if not num_prompt:
        raise APIError(400, "The prompt is empty.", prompt_param)
    if num_prompt >= limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your "
                            f"prompt has {num_prompt} tokens, leaving no room for the completion. Please "
                            "reduce the length of the prompt.", prompt_param, "context_length_exceeded")
    if requested is None:
        room = limit - num_prompt
        return room if default is None else min(default, room)
    if requested < 1:
        raise APIError(400, f"max_tokens must be at least 1, got {requested}.", "max_tokens")
    if num_prompt + requested > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you "
                            f"requested {num_prompt + requested} tokens ({num_prompt} in the prompt, "
                            f"{requested} for the completion). Please reduce the length of the prompt "
                            "or the completion.", "max_tokens", "context_length_exceeded")
    return requested


def _params(req, max_tokens: int) -> SamplingParams:
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              top_k=req.top_k, seed=req.seed, stop=req.stop_list,
                              stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


async def _run(state: ServerState, request: Request, job: Job, stream: bool) -> Response:
    try:
        state.client.validate(job.prompt_token_ids, job.params)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    state.acquire_slot(job.request_id, job.stop)
    if stream:
        # the slot is released by the response, when the stream ends however it ends
        return SSEResponse(stream_events(state, job), on_close=lambda: state.release_slot(job.request_id))
    try:
        out = await collect(state, job, request)
    finally:
        state.release_slot(job.request_id)
    return JSONResponse(full_response(state, job, out))
