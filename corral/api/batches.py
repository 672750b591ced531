"""OpenAI's Batch API (``/v1/batches``); the work is done by ``corral.batch.runner``."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from corral.api.auth import principal_of
from corral.api.requests import page_limit
from corral.api.services import services_of
from corral.api.spec import BATCH, route
from corral.batch.batches import batch_object
from corral.batch.pages import list_object
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
        principal_of(request.state),
    )
    services.batch_runner.wake()
    return json_response(batch_object(row))


async def retrieve(request: Request) -> Response:
    batches = services_of(request).batches
    viewer = principal_of(request.state)
    row = await asyncio.to_thread(batches.get_visible, request.path_params["id"], viewer)
    return json_response(batch_object(row))


async def list_batches(request: Request) -> Response:
    limit = page_limit(request, default=20, most=100)
    after = request.query_params.get("after")
    viewer = principal_of(request.state)
    rows, has_more = await asyncio.to_thread(
        services_of(request).batches.list, limit, after, viewer
    )
    data = [batch_object(r) for r in rows]
    return json_response(list_object(data, has_more))


async def cancel(request: Request) -> Response:
    services = services_of(request)
    batch_id = request.path_params["id"]
    await asyncio.to_thread(services.batches.get_visible, batch_id, principal_of(request.state))
    row = await asyncio.to_thread(services.batches.cancel, batch_id)
    services.batch_runner.cancel(batch_id)
    return json_response(batch_object(row))


_PAGE = {
    "limit": "Most batches in one page (1-100, default 20).",
    "after": "The id of the batch the page starts after.",
}

routes = [
    route("POST", "/v1/batches", create, "Create a batch", tag=BATCH, body=CreateBatch),
    route("GET", "/v1/batches", list_batches, "List batches", tag=BATCH, query=_PAGE),
    route("GET", "/v1/batches/{id}", retrieve, "Describe a batch", tag=BATCH),
    route("POST", "/v1/batches/{id}/cancel", cancel, "Cancel a batch", tag=BATCH),
]
