"""Forward an OpenAI-shaped request to a worker and relay its answer as it comes.

Streams pass through chunk by chunk, never buffered. If the worker dies mid-answer
the client gets a clear error (an SSE error event once streaming has begun, a 502
before) carrying the worker's exit code and last output. If the client leaves, the
connection to the worker is closed, not returned to the pool, so the worker sees the
disconnect and frees the slot.

aiohttp, not httpx, on this hop: it costs 0.35 ms per round trip here against
httpx's 1.27 ms (bench/RESULTS.md), and this hop is on every request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from corral.errors import CorralError, WorkerCrashed, WorkerUnavailable
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
