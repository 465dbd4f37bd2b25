"""What every route shares: the engine client, the tokenizer, limits, and reading a request body."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from fastapi import Request
from starlette.requests import ClientDisconnect

from banaserve.cluster.engine_client import EngineClient
from banaserve.engine.tokenizer import TextTokenizer
from banaserve.serve.args import ServeArgs
from banaserve.serve.chat import ChatRenderer, special_tokens_of
from banaserve.serve.errors import APIError
from banaserve.serve.metrics import ServerMetrics

# tokenizing more than this many characters moves off the event loop so other streams keep flowing
_TOKENIZE_INLINE_CHARS = 8192


@dataclass(slots=True)
class ServerState:
    """One per app; routes reach it as `request.app.state.server`."""

    client: EngineClient
    args: ServeArgs
    tokenizer: TextTokenizer
    chat: ChatRenderer
    metrics: ServerMetrics
    model_name: str
    created: int = field(default_factory=lambda: int(time.time()))
    active: dict[str, asyncio.Event] = field(default_factory=dict)  # request id -> its stop event
    shutting_down: bool = False

    @classmethod
    def create(cls, client: EngineClient, args: ServeArgs) -> ServerState:
        tokenizer = TextTokenizer(client.model_info.path)
        chat = ChatRenderer(tokenizer.chat_template, special_tokens_of(tokenizer.config))
        name = args.served_model_name or client.model_info.name
        return cls(client, args, tokenizer, chat, ServerMetrics(client), name)

    # ----- admission -----

    def acquire_slot(self, request_id: str, stop: asyncio.Event) -> None:
        """Count a generation request in, or refuse it when the server already holds max_pending."""
        if self.shutting_down:
            raise APIError(503, "The server is shutting down.")
        if len(self.active) >= self.args.max_pending:
            raise APIError(429, f"The server is at its limit of {self.args.max_pending} requests in "
                                "flight; retry later.", code="rate_limit_exceeded")
        self.active[request_id] = stop
        self.metrics.in_flight.set(len(self.active))

    def release_slot(self, request_id: str) -> None:
        self.active.pop(request_id, None)
        self.metrics.in_flight.set(len(self.active))

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, give open ones `grace_s` to finish, then stop the rest.

        Stopped requests are aborted in the engine and answered with finish_reason "abort"
        (streams get their last chunk and [DONE]) instead of having their connections cut.
        """
        self.shutting_down = True
        deadline = time.monotonic() + grace_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for stop in self.active.values():
            stop.set()

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                           "model", "model_not_found")

    async def tokenize(self, text: str) -> list[int]:
        if len(text) <= _TOKENIZE_INLINE_CHARS:
            return self.tokenizer.encode(text)
        return await asyncio.to_thread(self.tokenizer.encode, text)


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, refusing (413) before reading more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():  # counted as it arrives: chunked bodies have no length
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise APIError(400, "The client disconnected while sending the request.") from None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise APIError(400, "We could not parse the JSON body of your request. The body must be valid "
                            "JSON (UTF-8).") from None
    if not isinstance(obj, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return obj


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server's limit of {limit} bytes.",
                    code="request_too_large")
