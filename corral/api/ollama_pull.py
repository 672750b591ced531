"""Ollama's ``POST /api/pull``: a Corral pull job, reported in Ollama's progress lines.

The pull is an ordinary job (``corral.registry.pulls``): a second pull of the same
model joins the first, and a client that leaves does not cancel it (it completes,
or resumes at the next start), as Ollama documents ("multiple calls will share the
same download progress"). The lines follow Ollama's server: ``pulling manifest``;
for each file ``pulling <digest>`` with ``digest``, ``total`` and ``completed``;
then ``verifying sha256 digest``, ``writing manifest`` and ``success``, or an
``error`` line. Every file's sha256 is checked as it downloads, before anything is
registered, so the last steps only report what already happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from corral.api.ollama_http import line, ndjson_stream, ollama_errors
from corral.api.services import Services, services_of
from corral.api.spec import OLLAMA, route
from corral.errors import CorralError
from corral.httputil import json_response, run_until_disconnect
from corral.protocol.ollama import PullRequest
from corral.protocol.parse import parse_body
from corral.registry.pulls import ACTIVE, PullStatus
from corral.registry.records import ModelFile

POLL_SECONDS = 0.2


@ollama_errors
async def pull(request: Request) -> Response:
    services = services_of(request)
    req = parse_body(await request.body(), PullRequest)
    job, _ = await asyncio.to_thread(
        services.pulls.submit, req.target(), import_dirs=services.settings.import_dirs
    )
    updates = _updates(services, job.id)
    if req.stream:
        return ndjson_stream(line(update) async for update in updates)
    last = await run_until_disconnect(request, _last(updates))
    return json_response(last, status=500 if "error" in last else 200)


routes = [
    route(
        "POST",
        "/api/pull",
        pull,
        "Pull a model (streams progress by default)",
        tag=OLLAMA,
        body=PullRequest,
        stream="application/x-ndjson",
        access="admin",
    )
]


async def _updates(services: Services, job_id: str) -> AsyncIterator[dict[str, Any]]:
    yield {"status": "pulling manifest"}
    last: dict[str, Any] | None = None
    while True:
        job = await asyncio.to_thread(services.pulls.get, job_id)
        if job.state not in ACTIVE:
            files = await asyncio.to_thread(_files, services, job)
            for update in finish_lines(job, files):
                yield update
            return
        progress = progress_line(job)
        if progress is not None and progress != last:
            yield progress
            last = progress
        await asyncio.sleep(POLL_SECONDS)


async def _last(updates: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async for update in updates:
        last = update
    return last


def _files(services: Services, job: PullStatus) -> tuple[ModelFile, ...]:
    if job.state != "completed":
        return ()
    try:
        return services.registry.get(job.name).files
    except CorralError:  # removed again already: nothing to list
        return ()


def progress_line(job: PullStatus) -> dict[str, Any] | None:
    """The progress of the file a running job fetches now, in Ollama's shape."""
    if job.file is None:
        return None
    update = _file_line(job.file, job.file_sha256, job.file_size)
    update["completed"] = job.file_done
    return update


def finish_lines(job: PullStatus, files: tuple[ModelFile, ...]) -> list[dict[str, Any]]:
    """The last lines of a finished job: every file complete, then success; or the error."""
    if job.state != "completed":
        return [{"error": job.error or f"pull {job.state}"}]
    done = [{**_file_line(f.path, f.sha256, f.size), "completed": f.size} for f in files]
    return [
        *done,
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]


def _file_line(path: str, sha256: str | None, size: int | None) -> dict[str, Any]:
    update: dict[str, Any] = {
        "status": f"pulling {sha256[:12] if sha256 else path}",
        "digest": f"sha256:{sha256}" if sha256 else path,
    }
    if size is not None:
        update["total"] = size
    return update
