"""HTTP helpers shared by the gateway and the workers.

The important one is disconnect handling. Starlette notices a client that went away
only when the next write fails (and never, for a non-streamed response), so a request
whose client is gone could keep a slot busy until it finishes. Both helpers here
listen for ``http.disconnect`` alongside the work and cancel it the moment it comes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from corral.errors import (
    CorralError,
    InternalError,
    MethodNotAllowed,
    RouteNotFound,
    new_request_id,
)

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class DisconnectAwareStreamingResponse(StreamingResponse):
    """A StreamingResponse that stops its body iterator as soon as the client leaves.

    ``on_close`` runs once the response is over, however it ended (even if the body
    never started), so a slot held for it is always given back.
    """

    def __init__(self, *args: Any, on_close: Callable[[], None] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream_until_disconnect(send, receive)
        finally:
            if self._on_close is not None:
                self._on_close()

    async def _stream_until_disconnect(self, send: Send, receive: Receive) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({stream, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watch):
                task.cancel()
            await asyncio.gather(stream, watch, return_exceptions=True)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            exc = stream.exception()
            if not isinstance(exc, OSError):
                raise exc  # type: ignore[misc]


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise ClientDisconnect if the client leaves first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientDisconnect()
    return task.result()


def sse(data: str | bytes) -> bytes:
    """One server-sent event carrying ``data``, framed exactly as OpenAI frames it."""
    body = data.encode() if isinstance(data, str) else data
    return b"data: " + body + b"\n\n"


SSE_DONE = sse("[DONE]")


def json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_response(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(json_dumps(value), status, headers=headers, media_type="application/json")


def openai_error_response(error: CorralError) -> Response:
    return json_response(error.to_openai(), status=error.status, headers=error.headers)


def named_event(name: str, data: object) -> bytes:
    """One server-sent event with an ``event:`` name (Anthropic's and the Responses API's)."""
    return b"event: " + name.encode() + b"\ndata: " + json_dumps(data).encode() + b"\n\n"


def event_stream(
    body: AsyncIterator[bytes], on_close: Callable[[], None] | None = None
) -> StreamingResponse:
    return DisconnectAwareStreamingResponse(
        body, media_type="text/event-stream", headers=SSE_HEADERS, on_close=on_close
    )


# --- exception handlers -------------------------------------------------------------

_log = logging.getLogger("corral.http")
_SANE_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,128}")  # printable ASCII, at most 128 chars


def openai_error_handlers() -> dict[Any, Any]:
    """Starlette exception handlers answering every failure in OpenAI's error shape."""
    return {
        CorralError: _corral_error,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        Exception: _unexpected,
    }


async def _corral_error(request: Request, exc: CorralError) -> Response:
    if exc.status >= 500:
        _log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return openai_error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        error: CorralError = MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.url.path}."
        )
    else:
        error = RouteNotFound(f"Unknown path {request.url.path}.")
    return openai_error_response(error)


async def _client_gone(_: Request, __: ClientDisconnect) -> Response:
    return Response(status_code=499)  # never delivered: the client is gone


async def _unexpected(request: Request, exc: Exception) -> Response:
    return openai_error_response(internal_error(request, exc))


def internal_error(request: Request, exc: BaseException) -> InternalError:
    """The answer to an exception no named error covers, which is logged here.

    Its text may hold paths, prompts or secrets, so the client gets only a request id
    (in the message and the ``X-Request-Id`` header) and the log has the traceback.
    """
    error = InternalError(request_id(request))
    _log.exception(
        "unexpected error on %s %s [request %s]",
        request.method,
        request.url.path,
        error.request_id,
        exc_info=exc,
    )
    return error


def request_id(request: Request) -> str:
    """The client's ``X-Request-Id`` if it is printable and at most 128 characters,
    else a fresh id."""
    given = request.headers.get("x-request-id")
    if given is not None and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


Handler = Callable[[Request], Awaitable[Response]]


def errors_shaped(
    render: Callable[[CorralError], Any], log: logging.Logger
) -> Callable[[Handler], Handler]:
    """A route decorator answering the route's failures with ``render(error)`` as the body.

    The app's exception handlers answer in OpenAI's shape; routes of an API with its
    own shape (Ollama's ``{"error": "..."}``, Anthropic's ``{"type": "error", ...}``)
    are wrapped by this instead: the same errors and status codes, in that body.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except CorralError as exc:
                if exc.status >= 500:
                    log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
                error = exc
            except ClientDisconnect:
                raise
            except Exception as exc:  # the app's handler would answer in OpenAI's shape
                error = internal_error(request, exc)
            return json_response(render(error), status=error.status, headers=error.headers)

        return route

    return decorate
