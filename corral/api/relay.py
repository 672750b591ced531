"""Relay a worker's reply to an HTTP client, watching for the client to leave.

The inference service knows nothing of Starlette; routes wait for it with
``run_until_disconnect`` (a client that leaves cancels its wait, or its request, at
once), and this thin layer turns a ``WorkerReply`` into a response, streamed chunk
by chunk, never buffered. A worker that dies mid-stream ends the stream with an
OpenAI error event carrying its exit code and last output. Routes of APIs that are
translated into the worker's chat completions (Anthropic's Messages, OpenAI's
Responses) send with ``send_json`` and answer with ``translated_reply``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from corral.api.requests import caller_of
from corral.api.services import Services
from corral.errors import CorralError
from corral.httputil import (
    event_stream,
    json_dumps,
    json_response,
    named_event,
    run_until_disconnect,
    sse,
)
from corral.protocol.parse import check_counts
from corral.registry.records import ModelRecord
from corral.service.inference import Exchange
from corral.service.worker_client import WorkerReply

Event = tuple[str, Any]  # a named server-sent event: (event name, data)


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


async def send_json(
    request: Request,
    services: Services,
    record: ModelRecord,
    keep_alive: float | None,
    path: str,
    payload: dict[str, Any],
) -> Exchange:
    """A request the gateway built (an API translated into the worker's OpenAI shape),
    sent in the caller's turn; a client that leaves meanwhile cancels it."""
    settings = services.settings
    check_counts(payload, settings.max_messages, settings.max_tools)
    caller = caller_of(request, settings.batch_keys)
    body = json_dumps(payload).encode()
    send = services.inference.send(record, path, body, caller, keep_alive)
    return await run_until_disconnect(request, send)


class EventTranslator(Protocol):
    """A worker's chat chunks as another API's named stream events."""

    def start(self) -> list[Event]: ...
    def feed(self, chunk: dict[str, Any]) -> list[Event]: ...
    def finish(self) -> list[Event]: ...


async def translated_reply(
    request: Request,
    reply: WorkerReply,
    *,
    stream: bool,
    translator: Callable[[], EventTranslator],
    whole: Callable[[dict[str, Any]], Any],
    error_event: Callable[[CorralError], Event],
) -> Response:
    """The worker's chat completion in another API's shape: ``whole`` of the answer, or
    the ``translator``'s named events as the chunks come. A refusal before the stream
    starts is raised (the route answers it with its status); one after it is the last
    event, ``error_event``."""
    if stream:
        try:
            await run_until_disconnect(request, reply.raise_for_status())
        except BaseException:
            reply.close()
            raise
        events = _named_events(reply, translator(), error_event)
        return event_stream(events, on_close=reply.close)
    try:
        answer = await run_until_disconnect(request, reply.json())
    finally:
        reply.close()
    return json_response(whole(answer))


async def _named_events(
    reply: WorkerReply, translator: EventTranslator, error_event: Callable[[CorralError], Event]
) -> AsyncIterator[bytes]:
    try:
        for name, data in translator.start():
            yield named_event(name, data)
        async for chunk in reply.events():
            for name, data in translator.feed(chunk):
                yield named_event(name, data)
        for name, data in translator.finish():
            yield named_event(name, data)
    except CorralError as exc:  # the status is sent: the error is the last event
        yield named_event(*error_event(exc))
