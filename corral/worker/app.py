"""The worker's HTTP app: an OpenAI-compatible server for exactly one loaded model.

Because it speaks plain OpenAI (plus ``/health``), the gateway treats it like any
other OpenAI-compatible server: llama.cpp's ``llama-server`` or ``vllm serve`` can
stand in its place without the gateway changing.
"""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.engines.base import Engine
from corral.httputil import json_response, openai_error_handlers
from corral.registry.records import capability_names
from corral.worker.serving import WorkerService
from corral.worker.tensors import TensorService


def create_worker_app(engine: Engine, model_name: str) -> Starlette:
    service = WorkerService(engine, model_name)
    tensors = TensorService(engine)
    started = int(time.time())

    async def health(_: Request) -> Response:
        caps = engine.capabilities
        return json_response(
            {
                "status": "ok",
                "model": model_name,
                "context_length": caps.context_length,
                "capabilities": capability_names(caps.offers),
                **engine.stats(),
            }
        )

    async def models(_: Request) -> Response:
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "corral"}
        return json_response({"object": "list", "data": [card]})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/v1/completions", service.completion, methods=["POST"]),
        Route("/v1/embeddings", service.embeddings, methods=["POST"]),
        Route("/v1/rerank", service.rerank, methods=["POST"]),
        # The Open Inference Protocol, as Triton or MLServer serve it: the name in the
        # path is the one the client used, echoed in the answer.
        Route("/v2/models/{name:path}/versions/{version}/infer", tensors.infer, methods=["POST"]),
        Route("/v2/models/{name:path}/infer", tensors.infer, methods=["POST"]),
        # GET as V2 has it; POST is how the gateway asks (it posts every request).
        Route(
            "/v2/models/{name:path}/versions/{version}",
            tensors.metadata,
            methods=["GET", "POST"],
        ),
        Route("/v2/models/{name:path}", tensors.metadata, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, exception_handlers=openai_error_handlers())
