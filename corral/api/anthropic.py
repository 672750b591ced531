"""Anthropic's Messages API: ``POST /v1/messages``, for the ``anthropic`` SDK and the
tools built on it (Claude Code among them), on any chat model here.

The route parses (400), resolves the model (404), turns the request into the
worker's chat completion (``corral.protocol.anthropic_openai``), waits in the
scheduler's line, and turns the answer back into a message or Anthropic's stream of
events. Every failure is answered in Anthropic's error shape, ``{"type": "error",
"error": {"type", "message"}}``; once a stream has begun, as an ``error`` event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.requests import caller_of, keep_alive_of
from corral.api.services import services_of
from corral.errors import CorralError
from corral.httputil import (
    errors_shaped,
    event_stream,
    json_dumps,
    json_response,
    named_event,
    run_until_disconnect,
)
from corral.protocol import anthropic_openai as translate
from corral.protocol.anthropic import MessagesRequest
from corral.protocol.parse import parse_json_object, validate
from corral.registry.records import Capability
from corral.service.worker_client import WorkerReply

log = logging.getLogger("corral.anthropic")


anthropic_errors = errors_shaped(lambda error: error.to_anthropic(), log)


@anthropic_errors
async def messages(request: Request) -> Response:
    services = services_of(request)
    fields = parse_json_object(await request.body())
    req = validate(fields, MessagesRequest)
    payload = translate.chat_request(req)
    record = services.inference.resolve(req.model, Capability.CHAT, payload)
    caller = caller_of(request, services.settings.batch_keys)
    body = json_dumps(payload).encode()
    send = services.inference.send(record, translate.CHAT_PATH, body, caller, keep_alive_of(req))
    exchange = await run_until_disconnect(request, send)
    reply = exchange.reply
    if req.stream:
        try:
            await run_until_disconnect(request, reply.raise_for_status())
        except BaseException:
            reply.close()
            raise
        return event_stream(_events(reply, req.model), on_close=reply.close)
    try:
        answer = await run_until_disconnect(request, reply.json())
    finally:
        reply.close()
    return json_response(translate.message_response(answer, req.model))


routes = [Route("/v1/messages", messages, methods=["POST"])]


async def _events(reply: WorkerReply, model: str) -> AsyncIterator[bytes]:
    translator = translate.StreamTranslator(model)
    try:
        for name, data in translator.start():
            yield named_event(name, data)
        async for chunk in reply.events():
            for name, data in translator.feed(chunk):
                yield named_event(name, data)
        for name, data in translator.finish():
            yield named_event(name, data)
    except CorralError as exc:  # the status is sent: the error is the last event
        log.warning("stream failed: %s", exc.message)
        yield named_event("error", exc.to_anthropic())
