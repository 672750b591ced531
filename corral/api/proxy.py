"""Forward an OpenAI-shaped request to a worker and relay its answer as it comes.

Streams pass through chunk by chunk, never buffered. If the worker dies mid-answer
the client gets a clear error (an SSE error event once streaming has begun, a 502
before) carrying the worker's exit code and last output, and the client leaving
closes the connection to the worker, which frees the slot there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
from starlette.requests import Request
from starlette.responses import Response

from corral.errors import CorralError, WorkerCrashed, WorkerUnavailable
from corral.httputil import event_stream, json_dumps, run_until_disconnect, sse
from corral.scheduler.process import WorkerProcess

log = logging.getLogger("corral.proxy")
JSON = {"content-type": "application/json"}
CRASH_WAIT_SECONDS = 1.0


class WorkerProxy:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def forward(
        self, request: Request, worker: WorkerProcess, path: str, body: bytes, stream: bool
    ) -> Response:
        url = worker.base_url + path
        upstream = self._client.build_request("POST", url, content=body, headers=JSON)
        try:
            response = await run_until_disconnect(request, self._client.send(upstream, stream=True))
        except httpx.TransportError as exc:
            raise await self._failure(worker, exc) from None
        if not stream or response.status_code != 200:
            try:
                content = await run_until_disconnect(request, response.aread())
            except httpx.TransportError as exc:
                raise await self._failure(worker, exc) from None
            finally:
                await response.aclose()
            return Response(
                content,
                response.status_code,
                media_type=response.headers.get("content-type", "application/json"),
            )
        return event_stream(self._relay(response, worker))

    async def _relay(self, response: httpx.Response, worker: WorkerProcess) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            error = await self._failure(worker, exc)
            yield sse(json_dumps(error.to_openai()))
        finally:
            await response.aclose()

    async def _failure(self, worker: WorkerProcess, exc: Exception) -> CorralError:
        """Name what happened: the worker died (with its last words) or is unreachable."""
        if await worker.wait_exited(CRASH_WAIT_SECONDS):
            log.error("worker for %s died: exit code %s", worker.spec.model, worker.returncode)
            return WorkerCrashed(
                f"The worker for '{worker.spec.model}' crashed (exit code {worker.returncode}) "
                f"while serving this request; the next request restarts it. "
                f"Its last output:\n{worker.tail()}"
            )
        return WorkerUnavailable(f"The worker for '{worker.spec.model}' is unreachable: {exc}")
