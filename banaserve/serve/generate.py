"""Running one request on the engine client: as an SSE stream or to completion, never leaking it.

Whatever ends a request early (the client closing the connection, a server shutdown, an
error), the request is aborted in the engine so its KV blocks are freed; the in-flight slot
is released exactly once by the caller of these functions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator

import anyio
from fastapi import Request

from banaserve.engine.outputs import RequestOutput
from banaserve.serve.errors import APIError, error_body
from banaserve.serve.metrics import RequestTimer
from banaserve.serve.responses import Job, chunk, usage_chunk
from banaserve.serve.sse import DONE, sse_event
from banaserve.serve.state import ServerState

logger = logging.getLogger("banaserve.serve")


async def stream_events(state: ServerState, job: Job) -> AsyncGenerator[bytes, None]:
    """SSE events of one request; closing the generator early aborts the request.

    When the server drains (`job.stop` set) the stream still ends properly: a last chunk with
    finish_reason "abort", usage if asked for, and [DONE].
    """
    timer = RequestTimer(state.metrics, num_prompt_tokens=len(job.prompt_token_ids))
    outputs = state.client.generate(job.request_id, job.prompt_token_ids, job.params)
    finished = False
    num_tokens = 0
    try:
        if job.chat:
            yield sse_event(chunk(state, job, None, None, role=True))
        async for out in _until_stopped(outputs, job.stop):
            timer.on_tokens(len(out.new_token_ids), len(out.token_ids))
            num_tokens = len(out.token_ids)
            finished = out.finished
            if out.new_text or finished:
                yield sse_event(chunk(state, job, out.new_text, out.finish_reason if finished else None))
            if finished:
                timer.finish(out.finish_reason or "stop")
        if not finished:
            yield sse_event(chunk(state, job, None, "abort"))
        if job.include_usage:
            yield sse_event(usage_chunk(state, job, num_tokens))
        yield DONE
    except Exception as exc:  # the stream has started: report in-band, as OpenAI does
        yield sse_event(_error_event(exc))
        yield DONE
    finally:
        if not finished:
            timer.finish("abort")
            await _abort(state, job.request_id, outputs)


async def collect(state: ServerState, job: Job, request: Request) -> RequestOutput:
    """Run to the end; abort if the client disconnects first (it never reads the 400) or the
    server drains (the output so far comes back with finish_reason "abort")."""
    timer = RequestTimer(state.metrics, num_prompt_tokens=len(job.prompt_token_ids))
    outputs = state.client.generate(job.request_id, job.prompt_token_ids, job.params)
    seen: list[RequestOutput] = []

    async def run() -> RequestOutput:
        async for out in outputs:
            timer.on_tokens(len(out.new_token_ids), len(out.token_ids))
            seen[:] = [out]
        if not seen or not seen[0].finished:
            raise RuntimeError("the engine ended the request without a final output")
        return seen[0]

    runner = asyncio.ensure_future(run())
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    stopper = asyncio.ensure_future(job.stop.wait())
    finished = False
    try:
        await asyncio.wait((runner, watcher, stopper), return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            result = runner.result()  # raises the engine's error, if any
            finished = True
            timer.finish(result.finish_reason or "stop")
            return result
        if stopper.done():
            return _aborted_output(job, seen[0] if seen else None)
        raise APIError(400, "The client disconnected before the response was ready.")
    except ValueError as exc:  # the engine refused the request after validate() accepted it
        raise APIError(400, str(exc)) from None
    finally:
        watcher.cancel()
        stopper.cancel()
        if not finished:
            runner.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait((runner,))  # let the cancellation close the engine stream
            timer.finish("abort")
            await _abort(state, job.request_id, outputs)


async def _until_stopped(outputs: AsyncGenerator[RequestOutput, None],
                         stop: asyncio.Event) -> AsyncGenerator[RequestOutput, None]:
    """`outputs`, cut short (without a finished output) once `stop` is set."""
    stopped = asyncio.ensure_future(stop.wait())
    nxt: asyncio.Future | None = None
    try:
        while True:
            nxt = asyncio.ensure_future(anext(outputs))
            await asyncio.wait((nxt, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                return
            try:
                out = nxt.result()
            except StopAsyncIteration:
                return
            yield out
    finally:
        stopped.cancel()
        if nxt is not None and not nxt.done():  # stopped, or this stream was cancelled
            nxt.cancel()  # thrown into the engine stream, which aborts the request
            with anyio.CancelScope(shield=True):
                await asyncio.wait((nxt,))


def _aborted_output(job: Job, last: RequestOutput | None) -> RequestOutput:
    if last is None:
        return RequestOutput(job.request_id, job.prompt_token_ids, [], "", finished=True, finish_reason="abort")
    return dataclasses.replace(last, new_token_ids=[], new_text="", finished=True, finish_reason="abort")


async def _abort(state: ServerState, request_id: str, outputs: AsyncGenerator) -> None:
    # shielded: this runs while the surrounding task is being cancelled (client gone, shutdown)
    with anyio.CancelScope(shield=True):
        try:
            await outputs.aclose()
        except RuntimeError:
            pass  # still running in a task being cancelled: that cancellation closes it
        try:
            await state.client.abort(request_id)  # also for clients whose stream cleanup does not abort
        except Exception:
            logger.exception("abort of request %s failed", request_id)


async def _wait_for_disconnect(request: Request) -> None:
    # the body has been read, so the next ASGI message can only be the disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _error_event(exc: Exception) -> dict:
    if isinstance(exc, APIError):
        return error_body(exc.status, exc.message, exc.param, exc.code, exc.type)
    if isinstance(exc, ValueError):
        return error_body(400, str(exc))
    logger.error("request failed while streaming", exc_info=exc)
    return error_body(500, "The server had an error while processing your request.")
