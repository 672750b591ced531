"""Admin routes over the registry: list, show, import, copy, remove; pull jobs.

``corral list/show/rm/cp/import/pull`` use these while a server runs, so a removal
stops the model's worker first and the server's cache never goes stale. Registry
writes run in a thread: hashing a multi-GB import must not stall serving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from corral.api import v2
from corral.api.guard import MODEL_UPLOAD_PREFIX
from corral.api.requests import caller_of
from corral.api.services import Services, services_of
from corral.api.spec import ADMIN, route
from corral.httputil import json_response, run_until_disconnect
from corral.protocol.parse import parse_body
from corral.protocol.v2_schema import schemas
from corral.registry.benchmarks import benchmark_history, save_benchmark
from corral.registry.names import canonical_or_not_found
from corral.registry.upload import (
    checked_filename,
    discard,
    import_upload,
    receive_file,
    staging_path,
)


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    name: str | None = None


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str = Field(min_length=1)


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="hf.co/ORG/REPO[:QUANT], ORG/REPO, URL, path")
    name: str | None = None
    revision: str | None = None
    sha256: str | None = None
    params: dict[str, Any] | None = None
    aliases: list[str] | None = None
    expect: dict[str, str] | None = Field(None, description="path -> sha256 from a lock file")


class BenchmarkRun(BaseModel):
    """One ``corral bench`` run to keep: measured by the CLI, stored by the server."""

    model_config = ConfigDict(extra="forbid")

    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[dict[str, Any]] = Field(max_length=10_000)


class ConfigureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)


async def list_models(request: Request) -> Response:
    services = services_of(request)
    records = await asyncio.to_thread(services.registry.list)
    return json_response({"models": [services.catalog.describe(r) for r in records]})


async def show_model(request: Request) -> Response:
    services = services_of(request)
    record = services.registry.get(request.path_params["name"])
    return json_response(services.catalog.describe(record))


async def inspect_model(request: Request) -> Response:
    """What the model is, as its engine reads the file: an ONNX graph's opsets, tensors,
    parameters and operators; a GGUF's header facts."""
    services = services_of(request)
    record = services.registry.get(request.path_params["name"])
    return json_response(await asyncio.to_thread(services.catalog.inspect, record))


async def model_schema(request: Request) -> Response:
    """JSON Schemas of a tensor model's V2 infer request and response, and an example
    request that passes both the schema and the server; from the model's own tensors
    (its worker is loaded to read them)."""
    services = services_of(request)
    caller = caller_of(request, services.settings.batch_keys)
    meta = await run_until_disconnect(
        request, v2.metadata(services, caller, request.path_params["name"], None)
    )
    return json_response(schemas(meta))


async def set_default(request: Request) -> Response:
    """Make this version what the model's bare name means (``PUT .../iris:2/default``)."""
    services = services_of(request)
    record = await asyncio.to_thread(services.registry.set_default, request.path_params["name"])
    return json_response(services.catalog.describe(record))


async def clear_default(request: Request) -> Response:
    """Let the bare name mean the newest version again."""
    services = services_of(request)
    record = await asyncio.to_thread(services.registry.clear_default, request.path_params["name"])
    return json_response(services.catalog.describe(record))


async def benchmarks(request: Request) -> Response:
    """A model's benchmark history, newest first: one version's (``iris:2``) or every
    version's (``iris``)."""
    services = services_of(request)
    name = request.path_params["name"]
    runs = await asyncio.to_thread(benchmark_history, services.registry, name)
    if not runs:
        services.registry.get(name)  # an unknown model is a 404, not an empty history
    return json_response({"model": name, "benchmarks": runs})


async def save_run(request: Request) -> Response:
    services = services_of(request)
    run = parse_body(await request.body(), BenchmarkRun)
    record = services.registry.get(request.path_params["name"])
    saved = await asyncio.to_thread(
        save_benchmark,
        services.registry,
        record,
        machine=run.machine,
        settings=run.settings,
        results=run.results,
    )
    return json_response(saved, status=201)


async def remove_model(request: Request) -> Response:
    removed = await remove_installed(services_of(request), request.path_params["name"])
    return json_response({"removed": removed})


async def remove_installed(services: Services, name: str) -> list[str]:
    """Remove a model (stopping its worker first) or one alias; the names removed.
    Ollama's ``DELETE /api/delete`` removes through here too."""
    record = services.registry.get(name)
    if canonical_or_not_found(name) not in record.aliases:  # the model, not one alias
        await services.scheduler.unload(record.name)
    return await asyncio.to_thread(services.registry.remove, name)


async def copy_model(request: Request) -> Response:
    services = services_of(request)
    req = parse_body(await request.body(), CopyRequest)
    record = await asyncio.to_thread(
        services.registry.copy, request.path_params["name"], req.destination
    )
    return json_response(services.catalog.describe(record), status=201)


async def configure_model(request: Request) -> Response:
    services = services_of(request)
    req = parse_body(await request.body(), ConfigureRequest)
    current = services.registry.get(request.path_params["name"])
    services.catalog.check_configuration(current, req.params)
    record = await asyncio.to_thread(
        services.registry.configure,
        request.path_params["name"],
        params=req.params,
        aliases=req.aliases,
    )
    return json_response(services.catalog.describe(record))


async def import_model(request: Request) -> Response:
    services = services_of(request)
    req = parse_body(await request.body(), ImportRequest)
    record = await asyncio.to_thread(
        services.registry.import_path,
        Path(req.path),
        req.name,
        import_dirs=services.settings.import_dirs,  # the API reads only from these
    )
    return json_response(services.catalog.describe(record), status=201)


async def upload_model(request: Request) -> Response:
    """A .gguf or .onnx file as the raw body (``application/octet-stream``), streamed
    to disk and hashed as it arrives, then imported like ``corral import``; the reply
    is the model, with the sha256 of the bytes received."""
    services = services_of(request)
    filename = checked_filename(request.path_params["filename"])
    name = request.query_params.get("name") or None
    staged = staging_path(services.registry, filename)
    try:
        sha256, size = await receive_file(request.stream(), staged)
        record = await asyncio.to_thread(import_upload, services.registry, staged, name)
    finally:
        discard(staged)
    described = services.catalog.describe(record)
    return json_response({**described, "upload": {"sha256": sha256, "size": size}}, status=201)


async def start_pull(request: Request) -> Response:
    services = services_of(request)
    req = parse_body(await request.body(), PullRequest)
    services.catalog.check_declared(req.params)
    status, created = await asyncio.to_thread(
        services.pulls.submit,
        req.model,
        name=req.name,
        revision=req.revision,
        sha256=req.sha256,
        params=req.params,
        aliases=req.aliases,
        expect=req.expect,
        import_dirs=services.settings.import_dirs,
    )
    return json_response(status.to_dict(), status=202 if created else 200)


async def list_pulls(request: Request) -> Response:
    jobs = await asyncio.to_thread(services_of(request).pulls.list)
    return json_response({"pulls": [j.to_dict() for j in jobs]})


async def show_pull(request: Request) -> Response:
    job = await asyncio.to_thread(services_of(request).pulls.get, request.path_params["id"])
    return json_response(job.to_dict())


async def cancel_pull(request: Request) -> Response:
    job = await asyncio.to_thread(services_of(request).pulls.cancel, request.path_params["id"])
    return json_response(job.to_dict())


_MODEL = "/admin/models/{name:path}"

routes = [
    route("GET", "/admin/models", list_models, "List installed models", tag=ADMIN),
    route(
        "POST",
        "/admin/models/import",
        import_model,
        "Import a local model file or directory",
        tag=ADMIN,
        body=ImportRequest,
    ),
    route(
        "POST",
        _MODEL + "/copy",
        copy_model,
        "Give a model a second name",
        tag=ADMIN,
        body=CopyRequest,
    ),
    # Before the model's own GET, whose {name:path} would take "NAME/inspect".
    route("GET", _MODEL + "/inspect", inspect_model, "Inspect a model's file", tag=ADMIN),
    route("GET", _MODEL + "/schema", model_schema, "A tensor model's V2 schemas", tag=ADMIN),
    route("GET", _MODEL + "/benchmarks", benchmarks, "Benchmark history", tag=ADMIN),
    route(
        "POST",
        _MODEL + "/benchmarks",
        save_run,
        "Keep a benchmark run",
        tag=ADMIN,
        body=BenchmarkRun,
    ),
    route("PUT", _MODEL + "/default", set_default, "Mark a version the default", tag=ADMIN),
    route("DELETE", _MODEL + "/default", clear_default, "Newest version as default", tag=ADMIN),
    route("GET", _MODEL, show_model, "Describe an installed model", tag=ADMIN),
    route("DELETE", _MODEL, remove_model, "Remove a model or one alias", tag=ADMIN),
    route(
        "PATCH",
        _MODEL,
        configure_model,
        "Set a model's parameters and aliases",
        tag=ADMIN,
        body=ConfigureRequest,
    ),
    route(
        "PUT",
        MODEL_UPLOAD_PREFIX + "{filename}",
        upload_model,
        "Upload a model file (the raw body), streamed to disk and imported",
        tag=ADMIN,
        body_media="application/octet-stream",
        query={"name": "The model's name (default: from the file name)"},
    ),
    route("POST", "/admin/pulls", start_pull, "Start a pull", tag=ADMIN, body=PullRequest),
    route("GET", "/admin/pulls", list_pulls, "List pulls", tag=ADMIN),
    route("GET", "/admin/pulls/{id}", show_pull, "Describe a pull", tag=ADMIN),
    route("DELETE", "/admin/pulls/{id}", cancel_pull, "Cancel a pull", tag=ADMIN),
]
