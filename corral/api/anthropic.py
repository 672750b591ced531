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

from starlette.requests import Request
from starlette.responses import Response

from corral.api.relay import send_json, translated_reply
from corral.api.requests import keep_alive_of
from corral.api.services import services_of
from corral.api.spec import ANTHROPIC, route
from corral.errors import CorralError
from corral.httputil import errors_shaped
from corral.protocol import anthropic_openai as translate
from corral.protocol.anthropic import MessagesRequest
from corral.protocol.parse import parse_json_object, validate
from corral.registry.records import Capability

log = logging.getLogger("corral.anthropic")
anthropic_errors = errors_shaped(lambda error: error.to_anthropic(), log)


@anthropic_errors
async def messages(request: Request) -> Response:
    services = services_of(request)
    req = validate(parse_json_object(await request.body()), MessagesRequest)
    payload = translate.chat_request(req)
    record = services.inference.resolve(req.model, Capability.CHAT, payload)
    keep_alive = keep_alive_of(req)
    exchange = await send_json(request, services, record, keep_alive, translate.CHAT_PATH, payload)
    return await translated_reply(
        request,
        exchange.reply,
        stream=req.stream,
        translator=lambda: translate.StreamTranslator(req.model),
        whole=lambda answer: translate.message_response(answer, req.model),
        error_event=_error_event,
    )


def _error_event(error: CorralError) -> tuple[str, object]:
    log.warning("stream failed: %s", error.message)
    return "error", error.to_anthropic()


routes = [
    route(
        "POST",
        "/v1/messages",
        messages,
        "Create a message (Anthropic Messages API)",
        tag=ANTHROPIC,
        body=MessagesRequest,
        stream="text/event-stream",
    )
]
