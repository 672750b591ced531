"""OpenAI's Batch API (``/v1/batches``); the work is done by ``corral.batch.runner``."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.services import services_of
from corral.batch.batches import batch_object
from corral.batch.pages import list_object
from corral.errors import InvalidRequest
from corral.httputil import json_response
from corral.protocol.parse import parse_body


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


async def create(request: Request) -> Response:
    services = services_of(request)
    req = parse_body(await request.body(), CreateBatch)
    row = await asyncio.to_thread(
        services.batches.create,
        req.input_file_id,
        req.endpoint,
        req.completion_window,
        req.metadata,
    )
    services.batch_runner.wake()
    return json_response(batch_object(row))


async def retrieve(request: Request) -> Response:
    row = await asyncio.to_thread(services_of(request).batches.get, request.path_params["id"])
    return json_response(batch_object(row))


async def list_batches(request: Request) -> Response:
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("limit must be an integer.", param="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")
    after = request.query_params.get("after")
    rows, has_more = await asyncio.to_thread(services_of(request).batches.list, limit, after)
    data = [batch_object(r) for r in rows]
    return json_response(list_object(data, has_more))


async def cancel(request: Request) -> Response:
    services = services_of(request)
    batch_id = request.path_params["id"]
    row = await asyncio.to_thread(services.batches.cancel, batch_id)
    services.batch_runner.cancel(batch_id)
    return json_response(batch_object(row))


routes = [
    Route("/v1/batches", create, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{id}", retrieve, methods=["GET"]),
    Route("/v1/batches/{id}/cancel", cancel, methods=["POST"]),
]
