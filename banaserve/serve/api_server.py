"""The FastAPI app: routes of the OpenAI-compatible API plus health, metrics and cluster state."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from banaserve.serve.errors import install_error_handlers
from banaserve.serve.middleware import APIKeyMiddleware, RequestCounterMiddleware
from banaserve.serve.openai_handlers import create_chat_completion, create_completion
from banaserve.serve.state import ServerState


def build_app(state: ServerState) -> FastAPI:
    """An app serving `state.client`; the caller starts and shuts down the client around it."""
    # no /docs or /openapi.json: the API is OpenAI's, and less surface is less to secure
    app = FastAPI(title="banaserve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    install_error_handlers(app)
    if state.args.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=state.args.api_key)
    app.add_middleware(RequestCounterMiddleware, metrics=state.metrics)  # outermost: counts 401s too

    @app.get("/health")
    async def health() -> JSONResponse:
        check = getattr(state.client, "check_health", None)  # optional in the EngineClient protocol
        if state.shutting_down:
            return JSONResponse({"status": "shutting down"}, 503)
        try:
            if check is not None:
                check()
        except Exception as exc:
            return JSONResponse({"status": "unhealthy", "reason": str(exc)}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [_model_card(state)]})

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> JSONResponse:
        state.check_model(model)
        return JSONResponse(_model_card(state))

    @app.get("/v1/cluster")
    async def cluster() -> JSONResponse:
        return JSONResponse(state.client.cluster_state())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await create_completion(state, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await create_chat_completion(state, request)

    return app


def _model_card(state: ServerState) -> dict:
    info = state.client.model_info
    # no filesystem path here: clients have no business knowing the server's directories
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "banaserve",
            "max_model_len": info.max_model_len}
