"""OpenAI's Files API (``/v1/files``), for Batch API input and output files."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from corral.api.services import services_of
from corral.batch.files import file_object
from corral.batch.pages import list_object
from corral.httputil import json_response


async def upload(request: Request) -> Response:
    files = services_of(request).files
    row = await files.upload(request.headers.get("content-type", ""), request.stream())
    return json_response(file_object(row))


async def list_files(request: Request) -> Response:
    files = services_of(request).files
    purpose = request.query_params.get("purpose")
    limit = int(request.query_params.get("limit", "10000"))
    after = request.query_params.get("after")
    rows, has_more = await asyncio.to_thread(files.list, purpose, limit, after)
    data = [file_object(r) for r in rows]
    return json_response(list_object(data, has_more))


async def retrieve(request: Request) -> Response:
    row = await asyncio.to_thread(services_of(request).files.get, request.path_params["id"])
    return json_response(file_object(row))


async def content(request: Request) -> Response:
    files = services_of(request).files
    path = await asyncio.to_thread(files.path, request.path_params["id"])
    return FileResponse(path, media_type="application/jsonl")  # streamed from disk


async def delete(request: Request) -> Response:
    file_id = request.path_params["id"]
    await asyncio.to_thread(services_of(request).files.delete, file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


routes = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{id}", retrieve, methods=["GET"]),
    Route("/v1/files/{id}", delete, methods=["DELETE"]),
    Route("/v1/files/{id}/content", content, methods=["GET"]),
]
