"""Server-sent events: encoding, and a response that notices when the client goes away.

Starlette's StreamingResponse only watches for a disconnect on ASGI spec < 2.4; on 2.4 it
learns of it from the next failed send, which for a request waiting in the engine's queue may
be minutes away while it holds KV blocks. `SSEResponse` always listens for `http.disconnect`
next to the stream, and on any exit closes the event iterator so the request is aborted.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import anyio
import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"
_encoder = msgspec.json.Encoder()


def sse_event(payload: dict) -> bytes:
    """One `data:` event; JSON never contains a raw newline, so one line is always enough."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"


class SSEResponse(Response):
    """200 text/event-stream of already-encoded events; `on_close` runs once, however it ends."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None] | None = None):
        # no Response.__init__: it would set a body and with it Content-Length: 0
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    await send({"type": "http.response.start", "status": self.status_code,
                                "headers": self.raw_headers})
                    async for chunk in self.events:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    tg.cancel_scope.cancel()  # done: stop listening for a disconnect

                tg.start_soon(stream)
                await _wait_for_disconnect(receive)
                tg.cancel_scope.cancel()  # the client left: stop streaming
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()  # runs the generator's cleanup (abort) if it has not run
            if self.on_close is not None:
                self.on_close()


async def _wait_for_disconnect(receive: Receive) -> None:
    # the request body was read before the response started, so the next message is the disconnect
    while (await receive())["type"] != "http.disconnect":
        pass
