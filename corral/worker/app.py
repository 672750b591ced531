"""The worker's HTTP app: an OpenAI-compatible server for exactly one loaded model.

Because it speaks plain OpenAI (plus ``/health``), the gateway treats it like any
other OpenAI-compatible server: llama.cpp's ``llama-server`` or ``vllm serve`` can
stand in its place without the gateway changing.
"""

from __future__ import annotations

import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from corral.engines.base import Engine
from corral.errors import CorralError, EngineError, MethodNotAllowed, RouteNotFound
from corral.httputil import json_response, openai_error_response
from corral.worker.serving import WorkerService

log = logging.getLogger("corral.worker")


def create_worker_app(engine: Engine, model_name: str) -> Starlette:
    service = WorkerService(engine, model_name)
    started = int(time.time())

    async def health(_: Request) -> Response:
        caps = engine.capabilities
        return json_response(
            {
                "status": "ok",
                "model": model_name,
                "context_length": caps.context_length,
                "completion": caps.completion,
                "embeddings": caps.embeddings,
                **engine.stats(),
            }
        )

    async def models(_: Request) -> Response:
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "corral"}
        return json_response({"object": "list", "data": [card]})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/v1/completions", service.completion, methods=["POST"]),
        Route("/v1/embeddings", service.embeddings, methods=["POST"]),
    ]
    handlers = {
        CorralError: _corral_error,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        Exception: _unexpected,
    }
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]


async def _corral_error(_: Request, exc: CorralError) -> Response:
    return openai_error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        return openai_error_response(
            MethodNotAllowed(f"Method {request.method} is not allowed for {request.url.path}.")
        )
    return openai_error_response(RouteNotFound(f"Unknown path {request.url.path}."))


async def _client_gone(_: Request, __: ClientDisconnect) -> Response:
    return Response(status_code=499)


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return openai_error_response(EngineError(f"Internal error in the worker: {exc}"))
