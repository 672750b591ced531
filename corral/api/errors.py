"""Exception handlers: every error leaves the gateway in the API's own error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from corral.errors import CorralError, EngineError, MethodNotAllowed, RouteNotFound
from corral.httputil import openai_error_response

log = logging.getLogger("corral.api")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CorralError, _corral_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, _client_gone)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


def _respond(request: Request, error: CorralError) -> Response:
    # One place decides the body shape per API; Ollama's routes join here later.
    return openai_error_response(error)


async def _corral_error(request: Request, exc: CorralError) -> Response:
    if exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return _respond(request, exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        error: CorralError = MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.url.path}."
        )
    else:
        error = RouteNotFound(f"Unknown path {request.url.path}.")
    return _respond(request, error)


async def _client_gone(_: Request, __: ClientDisconnect) -> Response:
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(request, EngineError(f"Internal server error: {type(exc).__name__}: {exc}"))
