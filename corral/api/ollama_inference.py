"""Ollama's inference routes: ``/api/chat``, ``/api/generate``, ``/api/embed`` and the
legacy ``/api/embeddings``.

Each route parses (400), resolves the model (404), refuses what it cannot do (400),
translates to the worker's OpenAI-shaped request (``corral.protocol.ollama_openai``),
waits in the scheduler's line for a slot, and translates the answer back. No
request (no prompt, no messages) only loads the model, or with ``keep_alive: 0``
unloads it, as Ollama's API documents.

Durations: ``load_duration`` is the time from the request's arrival until its model
was ready and a slot granted (loading it, or waiting in line), ``total_duration``
the request's whole time in the services, and the eval durations the engine's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from corral.api.ollama_http import line, ndjson_stream, now, ollama_errors
from corral.api.relay import send_json
from corral.api.requests import caller_of, keep_alive_seconds
from corral.api.services import Services, services_of
from corral.api.spec import OLLAMA, route
from corral.errors import CorralError, UnsupportedCapability
from corral.httputil import json_response, run_until_disconnect
from corral.protocol import ollama_openai as translate
from corral.protocol.ollama import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest
from corral.protocol.ollama_openai import EMBEDDINGS_PATH, Kind, Marks, StreamTranslator
from corral.protocol.parse import parse_body, parse_json_object, validate
from corral.protocol.rerank import RerankRequest
from corral.registry.records import Capability, ModelRecord
from corral.service.worker_client import WorkerReply

log = logging.getLogger("corral.ollama")


@ollama_errors
async def chat(request: Request) -> Response:
    start = time.perf_counter_ns()
    req = parse_body(await request.body(), ChatRequest)
    record = _model(services_of(request), req.model, "chat")
    payload = translate.chat_request(req)
    work = _Work("chat", translate.CHAT_PATH, payload, keep_alive_seconds(req.keep_alive))
    return await _generate(request, record, start, work, bool(req.messages))


@ollama_errors
async def generate(request: Request) -> Response:
    start = time.perf_counter_ns()
    req = parse_body(await request.body(), GenerateRequest)
    record = _model(services_of(request), req.model, "generate")
    path, payload = translate.generate_request(req)
    work = _Work("generate", path, payload, keep_alive_seconds(req.keep_alive))
    return await _generate(request, record, start, work, bool(req.prompt))


@ollama_errors
async def embed(request: Request) -> Response:
    start = time.perf_counter_ns()
    services = services_of(request)
    req = parse_body(await request.body(), EmbedRequest)
    record = _model(services, req.model, "embeddings")
    inputs = translate.embed_inputs(req.input)
    keep_alive = keep_alive_seconds(req.keep_alive)
    if not inputs:
        marks = await _load(request, services, record, keep_alive, start)
        body: dict[str, Any] = {}
    else:
        payload = translate.embed_request(req.model, inputs, req.dimensions, req.truncate)
        body, marks = await _post(request, services, record, keep_alive, start, payload)
    end = time.perf_counter_ns()
    return json_response(translate.embed_response(body, model=req.model, marks=marks, end_ns=end))


@ollama_errors
async def embeddings(request: Request) -> Response:
    start = time.perf_counter_ns()
    services = services_of(request)
    req = parse_body(await request.body(), EmbeddingsRequest)
    record = _model(services, req.model, "embeddings")
    keep_alive = keep_alive_seconds(req.keep_alive)
    body: dict[str, Any] = {}
    if req.prompt:
        payload = translate.embed_request(req.model, [req.prompt], None)
        body, _ = await _post(request, services, record, keep_alive, start, payload)
    else:
        await _load(request, services, record, keep_alive, start)
    return json_response(translate.legacy_embedding(body))


@ollama_errors
async def rerank(request: Request) -> Response:
    """``/api/rerank`` as Ollama's reranking proposal (ollama/ollama#11389) shapes it:
    the same request as ``/v1/rerank``; ``{"model", "results"}`` back, errors Ollama's."""
    services = services_of(request)
    body = await request.body()
    req = validate(parse_json_object(body), RerankRequest)
    record = services.inference.resolve(req.model, Capability.RERANK)
    keep_alive = keep_alive_seconds((req.model_extra or {}).get("keep_alive"))
    exchange = await send_json(request, services, record, keep_alive, RERANK_PATH, req.model_dump())
    answer = await run_until_disconnect(request, exchange.reply.json())
    return json_response({"model": req.model, "results": answer.get("results", [])})


RERANK_PATH = "/v1/rerank"

_NDJSON = "application/x-ndjson"

routes = [
    route(
        "POST",
        "/api/chat",
        chat,
        "Chat (streams by default)",
        tag=OLLAMA,
        body=ChatRequest,
        stream=_NDJSON,
    ),
    route(
        "POST",
        "/api/rerank",
        rerank,
        "Rerank documents by relevance to a query",
        tag=OLLAMA,
        body=RerankRequest,
    ),
    route(
        "POST",
        "/api/generate",
        generate,
        "Generate from a prompt (streams by default)",
        tag=OLLAMA,
        body=GenerateRequest,
        stream=_NDJSON,
    ),
    route("POST", "/api/embed", embed, "Embed one or more inputs", tag=OLLAMA, body=EmbedRequest),
    route(
        "POST",
        "/api/embeddings",
        embeddings,
        "Embed one prompt (legacy)",
        tag=OLLAMA,
        body=EmbeddingsRequest,
    ),
]


_CAPABILITY = {
    "chat": Capability.CHAT,
    "generate": Capability.COMPLETION,
    "embeddings": Capability.EMBEDDINGS,
}


@dataclass(frozen=True)
class _Work:
    kind: Kind
    path: str
    payload: dict[str, Any]
    keep_alive: float | None


def _model(services: Services, name: str, verb: str) -> ModelRecord:
    """The model, if it can serve ``verb``; refusals in Ollama's words."""
    capability = _CAPABILITY[verb]
    record = services.registry.get(name)
    descriptor = services.catalog.for_record(record)  # a model no engine runs: say so
    if capability not in descriptor.capabilities(record):
        raise UnsupportedCapability(f'"{name}" does not support {verb}', param="model")
    return services.inference.resolve(name, capability)


async def _generate(
    request: Request, record: ModelRecord, start_ns: int, work: _Work, has_input: bool
) -> Response:
    """Chat and generate alike. Without messages or a prompt the request only loads
    the model, or with ``keep_alive: 0`` unloads it."""
    services = services_of(request)
    kind, model = work.kind, str(work.payload["model"])
    asked = Capability.CHAT if work.path == translate.CHAT_PATH else Capability.COMPLETION
    services.inference.precheck(record, asked, work.payload)
    if not has_input:
        if work.keep_alive == 0:
            await services.scheduler.unload(record.name)
            return json_response(translate.empty_reply(kind, model, now(), "unload"))
        await _load(request, services, record, work.keep_alive, start_ns)
        return json_response(translate.empty_reply(kind, model, now(), "load"))
    exchange = await send_json(request, services, record, work.keep_alive, work.path, work.payload)
    marks = Marks(start_ns, exchange.granted_ns)
    if work.payload["stream"]:
        try:
            await run_until_disconnect(request, exchange.reply.raise_for_status())
        except BaseException:
            exchange.reply.close()
            raise
        translator = StreamTranslator(kind, model, marks)
        lines = _lines(exchange.reply, translator)
        return ndjson_stream(lines, on_close=exchange.reply.close)
    body = await run_until_disconnect(request, exchange.reply.json())
    reply = translate.chat_response if kind == "chat" else translate.generate_response
    end = time.perf_counter_ns()
    return json_response(reply(body, model=model, created_at=now(), marks=marks, end_ns=end))


async def _post(
    request: Request,
    services: Services,
    record: ModelRecord,
    keep_alive: float | None,
    start_ns: int,
    payload: dict[str, Any],
) -> tuple[dict[str, Any], Marks]:
    """A non-streamed exchange: the worker's JSON answer, and when its slot came."""
    exchange = await send_json(request, services, record, keep_alive, EMBEDDINGS_PATH, payload)
    body = await run_until_disconnect(request, exchange.reply.json())
    return body, Marks(start_ns, exchange.granted_ns)


async def _load(
    request: Request,
    services: Services,
    record: ModelRecord,
    keep_alive: float | None,
    start_ns: int,
) -> Marks:
    """Load the model (wait for a slot on it) and give the slot straight back."""
    caller = caller_of(request, services.settings.batch_keys)
    grant = await run_until_disconnect(
        request, services.inference.acquire(record, caller, keep_alive)
    )
    grant.release()
    return Marks(start_ns, time.perf_counter_ns())


async def _lines(reply: WorkerReply, translator: StreamTranslator) -> AsyncIterator[bytes]:
    try:
        async for chunk in reply.events():
            for item in translator.feed(chunk, now()):
                yield line(item)
        yield line(translator.final(now(), time.perf_counter_ns(), reply.first_chunk_ns))
    except CorralError as exc:  # the status is sent: the error is the last line
        log.warning("stream failed: %s", exc.message)
        yield line(exc.to_ollama())
