"""ASGI middleware: API-key check on /v1/*, and request counting for /metrics.

Plain ASGI (not BaseHTTPMiddleware) so streaming responses and disconnects pass through untouched.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banaserve.serve.errors import APIError, error_response
from banaserve.serve.metrics import ServerMetrics

COUNTED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/cluster",
                           "/health", "/metrics"})


class APIKeyMiddleware:
    """401 on /v1/* unless `Authorization: Bearer <key>` matches; /health and /metrics stay open."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if not auth:
                exc = APIError(401, "You didn't provide an API key. You need to provide your API key in an "
                                    "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                                    "YOUR_KEY).")
            elif scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                exc = APIError(401, "Incorrect API key provided.", code="invalid_api_key")
            else:
                exc = None
            if exc is not None:
                response = error_response(exc)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestCounterMiddleware:
    """Counts every HTTP request by endpoint and status (500 if the app raised before answering)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # unknown paths share one label so that scanners cannot blow up the label set
        endpoint = scope["path"] if scope["path"] in COUNTED_PATHS else "other"
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
