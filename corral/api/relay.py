"""Relay a worker's reply to an HTTP client, watching for the client to leave.

The inference service knows nothing of Starlette; routes wait for it with
``run_until_disconnect`` (a client that leaves cancels its wait, or its request, at
once), and this thin layer turns a ``WorkerReply`` into a response, streamed chunk
by chunk, never buffered. A worker that dies mid-stream ends the stream with an
OpenAI error event carrying its exit code and last output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from corral.errors import CorralError
from corral.httputil import event_stream, json_dumps, run_until_disconnect, sse
from corral.service.worker_client import WorkerReply


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
