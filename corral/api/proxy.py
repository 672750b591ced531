"""Forward an OpenAI-shaped request to a worker and relay its answer as it comes.

Streams pass through chunk by chunk, never buffered. If the worker dies mid-answer
the client gets a clear error (an SSE error event once streaming has begun, a 502
before) carrying the worker's exit code and last output. If the client leaves, the
connection to the worker is closed, not returned to the pool, so the worker sees the
disconnect and frees the slot.

aiohttp, not httpx, on this hop: it costs 0.35 ms per round trip here against
httpx's 1.27 ms (bench/RESULTS.md), and this hop is on every request.

``forward`` relays bytes for the OpenAI API. APIs that translate (Ollama's) use
``events`` and ``post_json`` instead: the same hop, the same crash handling, but the
worker's answer parsed, and a worker's error raised as the CorralError it names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from corral.errors import (
    ContextLengthExceeded,
    CorralError,
    EngineError,
    InvalidRequest,
    QueueFull,
    UnsupportedCapability,
    WorkerCrashed,
    WorkerUnavailable,
)
from corral.httputil import event_stream, json_dumps, run_until_disconnect, sse
from corral.scheduler.process import WorkerProcess

log = logging.getLogger("corral.proxy")
JSON = {"Content-Type": "application/json"}
CRASH_WAIT_SECONDS = 1.0


class WorkerProxy:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def forward(
        self,
        request: Request,
        worker: WorkerProcess,
        path: str,
        body: bytes,
        stream: bool,
        on_done: Callable[[], None],
    ) -> Response:
        """Relay one request; ``on_done`` runs exactly once, when the answer is over."""
        url = worker.base_url + path
        streaming = False
        try:
            if not stream:
                return await run_until_disconnect(request, self._exchange(worker, url, body))
            try:
                response = await run_until_disconnect(
                    request, self._session.post(url, data=body, headers=JSON)
                )
            except aiohttp.ClientError as exc:
                raise await self._failure(worker, exc) from None
            if response.status == 200:
                streaming = True
                return event_stream(self._relay(response, worker), on_close=on_done)
            return await run_until_disconnect(request, self._read(worker, response))
        finally:
            if not streaming:
                on_done()

    async def events(
        self,
        request: Request,
        worker: WorkerProcess,
        path: str,
        payload: dict[str, Any],
        on_done: Callable[[], None],
    ) -> WorkerEvents:
        """Send a streamed request; once the worker has accepted it, its events.

        A refusal (a 400 for a prompt too long, ...) raises before any event, so the
        caller can still answer with a status code. ``on_done`` runs exactly once: at
        once if this raises, else when the events end or are closed.
        """
        try:
            response = await run_until_disconnect(request, self._post(worker, path, payload))
            if response.status != 200:
                content = await run_until_disconnect(request, self._read_all(worker, response))
                raise worker_error(response.status, content)
        except BaseException:
            on_done()
            raise
        return WorkerEvents(response, lambda exc: self._failure(worker, exc), on_done)

    async def post_json(
        self,
        request: Request,
        worker: WorkerProcess,
        path: str,
        payload: dict[str, Any],
        on_done: Callable[[], None],
    ) -> dict[str, Any]:
        """Send a non-streamed request; the worker's JSON answer, or its error raised.
        ``on_done`` runs exactly once, when the exchange is over."""
        try:
            return await run_until_disconnect(request, self._json_exchange(worker, path, payload))
        finally:
            on_done()

    async def exchange(
        self,
        worker: WorkerProcess,
        path: str,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One whole request and answer, whatever its status (the batch runner keeps
        error answers as they are); a dead or unreachable worker raises, named."""
        response = await self._post(worker, path, payload, headers)
        return response.status, await self._read_all(worker, response)

    async def _json_exchange(
        self, worker: WorkerProcess, path: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        status, content = await self.exchange(worker, path, payload)
        if status != 200:
            raise worker_error(status, content)
        return json_object_of(content)

    async def _post(
        self,
        worker: WorkerProcess,
        path: str,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        try:
            return await self._session.post(
                worker.base_url + path,
                data=json_dumps(payload),
                headers={**JSON, **(headers or {})},
            )
        except aiohttp.ClientError as exc:
            raise await self._failure(worker, exc) from None

    async def _read_all(self, worker: WorkerProcess, response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise await self._failure(worker, exc) from None
        finally:
            response.release()

    async def _exchange(self, worker: WorkerProcess, url: str, body: bytes) -> Response:
        """A whole non-streamed request and response."""
        try:
            response = await self._session.post(url, data=body, headers=JSON)
        except aiohttp.ClientError as exc:
            raise await self._failure(worker, exc) from None
        return await self._read(worker, response)

    async def _read(self, worker: WorkerProcess, response: aiohttp.ClientResponse) -> Response:
        try:
            content = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise await self._failure(worker, exc) from None
        finally:
            response.release()
        return Response(
            content,
            response.status,
            media_type=response.headers.get("Content-Type", "application/json"),
        )

    async def _relay(
        self, response: aiohttp.ClientResponse, worker: WorkerProcess
    ) -> AsyncIterator[bytes]:
        complete = False
        try:
            async for chunk in response.content.iter_any():
                yield chunk
            complete = True
        except aiohttp.ClientError as exc:
            error = await self._failure(worker, exc)
            yield sse(json_dumps(error.to_openai()))
        finally:
            if complete:
                response.release()
            else:
                response.close()  # drop the connection: the worker must see the client go

    async def _failure(self, worker: WorkerProcess, exc: Exception) -> CorralError:
        """Name what happened: the worker died (with its last words) or is unreachable."""
        if await worker.wait_exited(CRASH_WAIT_SECONDS):
            log.error("worker for %s died: exit code %s", worker.spec.model, worker.returncode)
            return WorkerCrashed(
                f"The worker for '{worker.spec.model}' crashed (exit code {worker.returncode}) "
                f"while serving this request; the next request restarts it. "
                f"Its last output:\n{worker.tail()}"
            )
        return WorkerUnavailable(f"The worker for '{worker.spec.model}' is unreachable: {exc!r}")


class WorkerEvents:
    """The events of one streamed worker answer (OpenAI-shaped SSE), parsed.

    Iterate once. An ``error`` event, or the worker dying mid-answer, raises the
    CorralError it names. ``close`` ends the answer early (it is safe to call twice,
    and does not need the event loop, so a response's ``on_close`` can call it): the
    connection is dropped, not pooled, so the worker sees the client go and frees
    the slot.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        failure: Callable[[Exception], Awaitable[CorralError]],
        on_done: Callable[[], None],
    ) -> None:
        self._response = response
        self._failure = failure
        self._on_done = on_done
        self._complete = False
        self._closed = False

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._read()

    async def _read(self) -> AsyncIterator[dict[str, Any]]:
        buffer = b""
        try:
            async for chunk in self._response.content.iter_any():
                *events, buffer = (buffer + chunk).split(b"\n\n")
                for raw in events:
                    event = _sse_data(raw)
                    if event is not None:
                        yield event
            self._complete = True
        except aiohttp.ClientError as exc:
            raise await self._failure(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete:
            self._response.release()
        else:
            self._response.close()
        self._on_done()


def _sse_data(raw: bytes) -> dict[str, Any] | None:
    """The JSON of one SSE event; None for ``[DONE]`` and comments. An error event
    raises it."""
    data = b"\n".join(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))
    if not data or data == b"[DONE]":
        return None
    event = json_object_of(data)
    if "error" in event:
        raise worker_error(None, data)
    return event


def json_object_of(content: bytes) -> dict[str, Any]:
    """A worker's answer as a JSON object, or an EngineError saying what came instead."""
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise EngineError(f"The worker sent an answer that is not a JSON object: {content[:200]!r}")
    return value


_BY_CODE: dict[str, type[CorralError]] = {
    "context_length_exceeded": ContextLengthExceeded,
    "unsupported_capability": UnsupportedCapability,
}
_BY_STATUS: dict[int, type[CorralError]] = {
    400: InvalidRequest,
    429: QueueFull,
    502: WorkerCrashed,
    503: WorkerUnavailable,
}


def worker_error(status: int | None, content: bytes) -> CorralError:
    """The CorralError a worker's OpenAI-shaped error body (and status) names."""
    try:
        body = json.loads(content)
        error = body["error"] if isinstance(body, dict) else {}
    except (ValueError, KeyError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = str(error.get("message") or content[:500].decode(errors="replace"))
    kind = _BY_CODE.get(str(error.get("code"))) or _BY_STATUS.get(status or 500, EngineError)
    return kind(message, param=error.get("param"))
