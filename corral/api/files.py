"""OpenAI's Files API (``/v1/files``), for Batch API input and output files."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from corral.api.auth import principal_of
from corral.api.requests import page_limit
from corral.api.services import services_of
from corral.api.spec import FILES, route
from corral.batch.files import file_object
from corral.batch.pages import list_object
from corral.batch.tables import StoredFileRow
from corral.httputil import json_response


async def upload(request: Request) -> Response:
    files = services_of(request).files
    viewer = principal_of(request.state)
    owner = viewer.key_id if viewer is not None else None
    row = await files.upload(request.headers.get("content-type", ""), request.stream(), owner)
    return json_response(file_object(row))


async def list_files(request: Request) -> Response:
    files = services_of(request).files
    purpose = request.query_params.get("purpose")
    limit = page_limit(request, default=10000, most=10000)
    after = request.query_params.get("after")
    viewer = principal_of(request.state)
    rows, has_more = await asyncio.to_thread(files.list, purpose, limit, after, viewer)
    data = [file_object(r) for r in rows]
    return json_response(list_object(data, has_more))


async def retrieve(request: Request) -> Response:
    row = await asyncio.to_thread(_visible, request)
    return json_response(file_object(row))


async def content(request: Request) -> Response:
    row = await asyncio.to_thread(_visible, request)
    path = services_of(request).files.directory / row.id
    return FileResponse(path, media_type="application/jsonl")  # streamed from disk


async def delete(request: Request) -> Response:
    file_id = (await asyncio.to_thread(_visible, request)).id
    await asyncio.to_thread(services_of(request).files.delete, file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def _visible(request: Request) -> StoredFileRow:
    """The file in the path, if the request's key may see it (else a 404)."""
    files = services_of(request).files
    return files.get_visible(request.path_params["id"], principal_of(request.state))


_PAGE = {
    "purpose": "Only files with this purpose (batch, batch_output).",
    "limit": "Most files in one page (1-10000, default 10000).",
    "after": "The id of the file the page starts after.",
}

routes = [
    route(
        "POST",
        "/v1/files",
        upload,
        "Upload a file (multipart: purpose, file)",
        tag=FILES,
        body_media="multipart/form-data",
    ),
    route("GET", "/v1/files", list_files, "List files", tag=FILES, query=_PAGE),
    route("GET", "/v1/files/{id}", retrieve, "Describe a file", tag=FILES),
    route("DELETE", "/v1/files/{id}", delete, "Delete a file", tag=FILES),
    route(
        "GET",
        "/v1/files/{id}/content",
        content,
        "Download a file's content",
        tag=FILES,
        reply_media="application/jsonl",
    ),
]
