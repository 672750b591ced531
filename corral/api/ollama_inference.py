"""Ollama's inference routes: ``/api/chat``, ``/api/generate``, ``/api/embed`` and the
legacy ``/api/embeddings``.

Each route parses (400), resolves the model (404), refuses what it cannot do (400),
translates to the worker's OpenAI-shaped request (``corral.protocol.ollama_openai``),
waits in the scheduler's line for a slot, and translates the answer back. No
request (no prompt, no messages) only loads the model, or with ``keep_alive: 0``
unloads it, as Ollama's API documents.

Durations: ``load_duration`` is the time from the request's arrival until its model
was ready and a slot granted (loading it, or waiting in line), ``total_duration``
the request's whole time in the gateway, and the eval durations the engine's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.gateway import Gateway, gateway_of
from corral.api.ollama_http import line, ndjson_stream, now, ollama_errors
from corral.api.proxy import WorkerEvents
from corral.api.requests import keep_alive_seconds
from corral.api.structured import refuse_unenforceable_body
from corral.errors import CorralError, UnsupportedCapability
from corral.httputil import json_response
from corral.protocol import ollama_openai as translate
from corral.protocol.ollama import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest
from corral.protocol.ollama_openai import Kind, Marks, StreamTranslator
from corral.protocol.parse import parse_body
from corral.registry.store import ModelRecord
from corral.scheduler.scheduler import Grant

log = logging.getLogger("corral.ollama")


@ollama_errors
async def chat(request: Request) -> Response:
    start = time.perf_counter_ns()
    gateway = gateway_of(request)
    req = parse_body(await request.body(), ChatRequest)
    record = _model(gateway, req.model, "chat")
    payload = translate.chat_request(req)
    refuse_unenforceable_body(payload)
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not req.messages:
        return await _load_only(request, gateway, record, "chat", req.model, keep_alive)
    grant, marks = await _acquire(request, gateway, record, keep_alive, start)
    return await _answer(request, gateway, grant, marks, "chat", translate.CHAT_PATH, payload)


@ollama_errors
async def generate(request: Request) -> Response:
    start = time.perf_counter_ns()
    gateway = gateway_of(request)
    req = parse_body(await request.body(), GenerateRequest)
    record = _model(gateway, req.model, "generate")
    path, payload = translate.generate_request(req)
    refuse_unenforceable_body(payload)
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not req.prompt:
        return await _load_only(request, gateway, record, "generate", req.model, keep_alive)
    grant, marks = await _acquire(request, gateway, record, keep_alive, start)
    return await _answer(request, gateway, grant, marks, "generate", path, payload)


@ollama_errors
async def embed(request: Request) -> Response:
    start = time.perf_counter_ns()
    gateway = gateway_of(request)
    req = parse_body(await request.body(), EmbedRequest)
    record = _model(gateway, req.model, "embeddings")
    inputs = translate.embed_inputs(req.input)
    keep_alive = keep_alive_seconds(req.keep_alive)
    grant, marks = await _acquire(request, gateway, record, keep_alive, start)
    body: dict[str, Any] = {}
    if inputs:
        payload = translate.embed_request(req.model, inputs, req.dimensions)
        body = await gateway.proxy.post_json(
            request, grant.worker, translate.EMBEDDINGS_PATH, payload, grant.release
        )
    grant.release()
    end = time.perf_counter_ns()
    return json_response(translate.embed_response(body, model=req.model, marks=marks, end_ns=end))


@ollama_errors
async def embeddings(request: Request) -> Response:
    start = time.perf_counter_ns()
    gateway = gateway_of(request)
    req = parse_body(await request.body(), EmbeddingsRequest)
    record = _model(gateway, req.model, "embeddings")
    keep_alive = keep_alive_seconds(req.keep_alive)
    grant, _ = await _acquire(request, gateway, record, keep_alive, start)
    body: dict[str, Any] = {}
    if req.prompt:
        payload = translate.embed_request(req.model, [req.prompt], None)
        body = await gateway.proxy.post_json(
            request, grant.worker, translate.EMBEDDINGS_PATH, payload, grant.release
        )
    grant.release()
    return json_response(translate.legacy_embedding(body))


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]


def _model(gateway: Gateway, name: str, verb: str) -> ModelRecord:
    """The model, if it can serve ``verb``; refusals in Ollama's words."""
    record = gateway.registry.get(name)
    if record.info.embedding != (verb == "embeddings"):
        raise UnsupportedCapability(f'"{name}" does not support {verb}', param="model")
    record.check_serves("embeddings" if verb == "embeddings" else "completion")
    return record


async def _acquire(
    request: Request,
    gateway: Gateway,
    record: ModelRecord,
    keep_alive: float | None,
    start_ns: int,
) -> tuple[Grant, Marks]:
    grant = await gateway.acquire(request, record, keep_alive)
    return grant, Marks(start_ns, time.perf_counter_ns())


async def _load_only(
    request: Request,
    gateway: Gateway,
    record: ModelRecord,
    kind: Kind,
    model: str,
    keep_alive: float | None,
) -> Response:
    if keep_alive == 0:
        await gateway.scheduler.unload(record.name)
        return json_response(translate.empty_reply(kind, model, now(), "unload"))
    grant, _ = await _acquire(request, gateway, record, keep_alive, time.perf_counter_ns())
    grant.release()
    return json_response(translate.empty_reply(kind, model, now(), "load"))


async def _answer(
    request: Request,
    gateway: Gateway,
    grant: Grant,
    marks: Marks,
    kind: Kind,
    path: str,
    payload: dict[str, Any],
) -> Response:
    model = str(payload["model"])
    if payload["stream"]:
        events = await gateway.proxy.events(request, grant.worker, path, payload, grant.release)
        translator = StreamTranslator(kind, model, marks)
        return ndjson_stream(_lines(events, translator), on_close=events.close)
    body = await gateway.proxy.post_json(request, grant.worker, path, payload, grant.release)
    reply = translate.chat_response if kind == "chat" else translate.generate_response
    end = time.perf_counter_ns()
    return json_response(reply(body, model=model, created_at=now(), marks=marks, end_ns=end))


async def _lines(events: WorkerEvents, translator: StreamTranslator) -> AsyncIterator[bytes]:
    try:
        async for chunk in events:
            for item in translator.feed(chunk, now()):
                yield line(item)
        yield line(translator.final(now(), time.perf_counter_ns()))
    except CorralError as exc:  # the status is sent: the error is the last line
        log.warning("stream failed: %s", exc.message)
        yield line(exc.to_ollama())
