"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

Every error a client can cause is an `APIError` with a 4xx status; anything else becomes a
generic 500 whose details stay in the server log, so no traceback ever reaches a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("banaserve.serve")

# status -> OpenAI error type
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error"}

# error hints for fields whose type is a union (pydantic reports one error per member)
UNION_HINTS = {
    "prompt": "a string, an array of token ids, or an array holding one of those",
    "stop": "a string or an array of strings",
    "content": "a string or an array of text parts",
}


class APIError(Exception):
    """An error to send to the client as is."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    """The JSON body of an error response (also sent as an SSE event when a stream fails)."""
    return {"error": {"message": message, "type": type or ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code, exc.type), exc.status)


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem of a pydantic error, phrased like OpenAI (field name, never the value)."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    param = _param_path(first["loc"])
    if first["type"] == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param)
    if first["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param)
    if sum(1 for e in errors if _param_path(e["loc"]) == param) > 1:  # every member of a union failed
        leaf = param.rsplit(".", 1)[-1].split("[", 1)[0]
        hint = UNION_HINTS.get(leaf, "a value of another type")
        return APIError(400, f"Invalid type for '{param}': expected {hint}.", param, "invalid_type")
    return APIError(400, f"Invalid value for '{param}': {first['msg']}.", param)


def _param_path(loc: tuple) -> str:
    """('messages', 0, 'content', 'list[TextPart]', 0) -> 'messages[0].content[0]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part.islower() and part not in ("str", "int", "float", "bool", "list"):
            out += f".{part}" if out else part
        # anything else names a union member (e.g. 'list[int]'), not a place in the request
    return out or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type to an OpenAI-style body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown routes (404) and wrong methods (405)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        return error_response(APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "The server had an error while processing your request."))
