"""Relay a worker's reply to an HTTP client, watching for the client to leave.

The inference service knows nothing of Starlette; this thin layer does the two things
only an HTTP route can: wait for the service while listening for ``http.disconnect``
(a client that leaves cancels its wait, or its request, at once), and turn a
``WorkerReply`` into a response, streamed chunk by chunk, never buffered. A worker
that dies mid-stream ends the stream with an OpenAI error event carrying its exit
code and last output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from corral.errors import CorralError
from corral.httputil import event_stream, json_dumps, run_until_disconnect, sse
from corral.service.worker_client import WorkerReply

T = TypeVar("T")


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``work``, cancelled if the client leaves first (ClientDisconnect is raised)."""
    return await run_until_disconnect(request, work)


async def openai_response(request: Request, reply: WorkerReply, stream: bool) -> Response:
    """The worker's OpenAI-shaped answer, as it is: bytes and status passed through."""
    if stream and reply.status == 200:
        return event_stream(_openai_chunks(reply), on_close=reply.close)
    try:
        content = await run_until_disconnect(request, reply.read())
    finally:
        reply.close()
    return Response(content, reply.status, media_type=reply.content_type)


async def _openai_chunks(reply: WorkerReply) -> AsyncIterator[bytes]:
    try:
        async for chunk in reply.chunks():
            yield chunk
    except CorralError as exc:  # the status is sent: the error is the last event
        yield sse(json_dumps(exc.to_openai()))
