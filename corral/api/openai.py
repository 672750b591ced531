"""OpenAI-compatible routes: validate, resolve the model, hand over to its worker.

The gateway validates requests itself so that a bad request is refused at once,
without loading a model, and then forwards the original bytes to the worker.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from corral.api.auth import require_usable, usable
from corral.api.relay import openai_response, send_json, translated_reply
from corral.api.requests import caller_of, keep_alive_of, note_client_fields
from corral.api.services import services_of
from corral.api.spec import OPENAI, route
from corral.engines.catalog import Catalog
from corral.httputil import (
    run_until_disconnect,
)
from corral.protocol import responses_openai
from corral.protocol.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
)
from corral.protocol.parse import check_counts, parse_json_object, validate
from corral.protocol.rerank import RerankRequest, RerankResponse
from corral.protocol.responses import ResponsesRequest
from corral.registry.records import Capability, ModelRecord, capability_names


async def chat_completions(request: Request) -> Response:
    return await _relay(request, ChatCompletionRequest, "/v1/chat/completions", Capability.CHAT)


async def completions(request: Request) -> Response:
    return await _relay(request, CompletionRequest, "/v1/completions", Capability.COMPLETION)


async def embeddings(request: Request) -> Response:
    return await _relay(request, EmbeddingRequest, "/v1/embeddings", Capability.EMBEDDINGS)


async def responses(request: Request) -> Response:
    """OpenAI's Responses API, stateless: one chat completion on the worker, translated."""
    services = services_of(request)
    req = validate(parse_json_object(await request.body()), ResponsesRequest)
    payload = responses_openai.chat_request(req)
    record = services.inference.resolve(req.model, Capability.CHAT, payload)
    path = responses_openai.CHAT_PATH
    exchange = await send_json(request, services, record, keep_alive_of(req), path, payload)
    return await translated_reply(
        request,
        exchange.reply,
        stream=req.stream,
        translator=lambda: responses_openai.StreamTranslator(responses_openai.Shell(req)),
        whole=lambda answer: responses_openai.response(answer, req),
        error_event=lambda error: ("error", {"type": "error", **error.to_openai()["error"]}),
    )


async def rerank(request: Request) -> Response:
    return await _relay(request, RerankRequest, "/v1/rerank", Capability.RERANK)


async def list_models(request: Request) -> Response:
    services = services_of(request)
    records = usable(request.state, services.registry.list())
    cards = [model_card(services.catalog, record) for record in records]
    return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")


async def get_model(request: Request) -> Response:
    services = services_of(request)
    record = require_usable(request.state, services.registry.get(request.path_params["name"]))
    card = model_card(services.catalog, record)
    return Response(card.model_dump_json(), media_type="application/json")


_SSE = "text/event-stream"
_RERANK = "Rerank documents by relevance to a query"

routes = [
    route(
        "POST",
        "/v1/chat/completions",
        chat_completions,
        "Create a chat completion",
        tag=OPENAI,
        body=ChatCompletionRequest,
        reply=ChatCompletion,
        stream=_SSE,
    ),
    route(
        "POST",
        "/v1/completions",
        completions,
        "Create a text completion",
        tag=OPENAI,
        body=CompletionRequest,
        reply=Completion,
        stream=_SSE,
    ),
    route(
        "POST",
        "/v1/embeddings",
        embeddings,
        "Create embeddings",
        tag=OPENAI,
        body=EmbeddingRequest,
        reply=EmbeddingResponse,
    ),
    route(
        "POST",
        "/v1/responses",
        responses,
        "Create a model response (stateless)",
        tag=OPENAI,
        body=ResponsesRequest,
        stream=_SSE,
    ),
    # Reranking where Cohere, Jina, vLLM and llama-server serve it.
    route(
        "POST", "/v1/rerank", rerank, _RERANK, tag=OPENAI, body=RerankRequest, reply=RerankResponse
    ),
    route(
        "POST", "/v2/rerank", rerank, _RERANK, tag=OPENAI, body=RerankRequest, reply=RerankResponse
    ),
    route("POST", "/rerank", rerank, _RERANK, tag=OPENAI, body=RerankRequest, reply=RerankResponse),
    route("GET", "/v1/models", list_models, "List models", tag=OPENAI, reply=ModelList),
    route(
        "GET", "/v1/models/{name:path}", get_model, "Describe a model", tag=OPENAI, reply=ModelCard
    ),
]


async def _relay(
    request: Request,
    wire: type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest | RerankRequest],
    path: str,
    capability: Capability,
) -> Response:
    services = services_of(request)
    body = await request.body()
    fields = parse_json_object(body)
    check_counts(fields, services.settings.max_messages, services.settings.max_tools)
    req = validate(fields, wire)
    record = services.inference.resolve(req.model, capability, fields)
    caller = caller_of(request, services.settings.batch_keys)
    note_client_fields(caller, fields)
    send = services.inference.send(record, path, body, caller, keep_alive_of(req))
    exchange = await run_until_disconnect(request, send)
    return await openai_response(request, exchange.reply, bool(getattr(req, "stream", False)))


def model_card(catalog: Catalog, record: ModelRecord) -> ModelCard:
    info = record.info
    meta = {
        "format": info.format,
        "architecture": info.architecture,
        "parameters": info.parameters,
        "quantization": info.quantization,
        "context_length": info.context_length,
        "capabilities": capability_names(catalog.capabilities(record)),
        "size": record.size,
        "sha256": record.sha256,
        "random_weights": info.synthetic is not None,
    }
    if info.synthetic:
        meta["description"] = info.synthetic
    return ModelCard(id=record.name, created=int(record.created or time.time()), corral=meta)
