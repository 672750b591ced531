"""OpenAI-compatible routes: validate, resolve the model, hand over to its worker.

The gateway validates requests itself so that a bad request is refused at once,
without loading a model, and then forwards the original bytes to the worker.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.gateway import gateway_of
from corral.api.requests import keep_alive_of
from corral.api.structured import refuse_unenforceable
from corral.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
)
from corral.protocol.parse import parse_body
from corral.registry.store import ModelRecord


async def chat_completions(request: Request) -> Response:
    return await _relay(request, ChatCompletionRequest, "/v1/chat/completions", "completion")


async def completions(request: Request) -> Response:
    return await _relay(request, CompletionRequest, "/v1/completions", "completion")


async def embeddings(request: Request) -> Response:
    return await _relay(request, EmbeddingRequest, "/v1/embeddings", "embeddings")


async def list_models(request: Request) -> Response:
    cards = [model_card(record) for record in gateway_of(request).registry.list()]
    return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")


async def get_model(request: Request) -> Response:
    record = gateway_of(request).registry.get(request.path_params["name"])
    return Response(model_card(record).model_dump_json(), media_type="application/json")


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{name:path}", get_model, methods=["GET"]),
]


async def _relay(
    request: Request,
    wire: type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest],
    path: str,
    capability: str,
) -> Response:
    gateway = gateway_of(request)
    body = await request.body()
    req = parse_body(body, wire)
    record = gateway.registry.get(req.model)
    record.check_serves(capability)
    if isinstance(req, ChatCompletionRequest):
        refuse_unenforceable(req)
    grant = await gateway.acquire(request, record, keep_alive_of(req))
    stream = bool(getattr(req, "stream", False))
    return await gateway.proxy.forward(request, grant.worker, path, body, stream, grant.release)


def model_card(record: ModelRecord) -> ModelCard:
    info = record.info
    meta = {
        "format": info.format,
        "architecture": info.architecture,
        "parameters": info.parameters,
        "quantization": info.quantization,
        "context_length": info.context_length,
        "capabilities": record.capabilities,
        "size": record.size,
        "sha256": record.sha256,
        "random_weights": info.synthetic is not None,
    }
    if info.synthetic:
        meta["description"] = info.synthetic
    return ModelCard(id=record.name, created=int(record.created or time.time()), corral=meta)
