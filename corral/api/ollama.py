"""Ollama-compatible routes: the whole table, and the model routes themselves.

Inference (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``)
is in ``ollama_inference``, ``/api/pull`` in ``ollama_pull``; here are the routes
over installed and loaded models (tags, show, ps, copy, delete), the version and
the ``/`` health check. Errors are Ollama's ``{"error": "..."}`` (``ollama_http``).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from corral.api import ollama_inference, ollama_pull
from corral.api.auth import require_usable, usable
from corral.api.ollama_http import ollama_errors
from corral.api.registry import remove_installed
from corral.api.services import Services, services_of
from corral.api.spec import OLLAMA, route
from corral.httputil import json_response
from corral.protocol.ollama import CopyRequest, DeleteRequest, ShowRequest
from corral.protocol.ollama_openai import timestamp
from corral.protocol.parse import parse_body
from corral.registry.gguf_header import read_metadata
from corral.registry.records import Capability, ModelRecord

FOREVER = datetime(2318, 1, 1, tzinfo=UTC)  # Ollama's "never expires" is a far-future time
# Ollama clients parse the version as semver and turn features on by it (tools,
# structured outputs, /api/embed). Corral's own version (0.x) would read as an
# Ollama from 2023 without them, so this is the Ollama API release whose routes
# and fields Corral implements; Corral's own version is in GET /health.
OLLAMA_API_VERSION = "0.6.0"
RUNNING = "Ollama is running"  # clients and tools check for exactly this text


@ollama_errors
async def ps(request: Request) -> Response:
    services = services_of(request)
    models = []
    for status in services.scheduler.snapshot():
        if status.state not in ("ready", "draining"):
            continue
        record = services.registry.get(status.model)
        if not usable(request.state, [record]):
            continue
        models.append(
            {
                "name": record.name,
                "model": record.name,
                "size": status.memory.actual or status.memory.estimated,
                "digest": record.sha256,
                "details": details(record),
                "expires_at": (
                    datetime.fromtimestamp(status.expires_at, UTC)
                    if status.expires_at is not None
                    else FOREVER
                ).isoformat(),
                "size_vram": status.memory.vram_actual or status.memory.vram_estimated,
                "context_length": _context_length(services, record),
            }
        )
    return json_response({"models": models})


def parameter_size(n: int) -> str:
    """Ollama's style: 7.2B, 135M."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}" if n < 100 * scale else f"{n / scale:.0f}{unit}"
    return str(n)


@ollama_errors
async def tags(request: Request) -> Response:
    records = usable(request.state, await asyncio.to_thread(services_of(request).registry.list))
    records.sort(key=lambda r: r.created, reverse=True)  # newest first, as Ollama lists
    models = [
        {
            "name": r.name,
            "model": r.name,
            "modified_at": modified_at(r),
            "size": r.size,
            "digest": r.sha256,
            "details": details(r),
        }
        for r in records
    ]
    return json_response({"models": models})


@ollama_errors
async def show(request: Request) -> Response:
    req = parse_body(await request.body(), ShowRequest)
    services = services_of(request)
    record = require_usable(request.state, services.registry.get(req.target()))
    header: dict[str, Any] = {}
    if record.format == "gguf":
        read = functools.partial(read_metadata, max_array=2**62) if req.verbose else _header
        header = dict(await asyncio.to_thread(read, record.path))
    template = str(header.pop("tokenizer.chat_template", ""))
    header.pop("general.name", None)  # as Ollama: the name is the one asked for
    header.setdefault("general.parameter_count", record.info.parameters)
    license_text = header.get("general.license", "")
    # The context a request gets here: clients size their prompts by num_ctx, and
    # Corral refuses a prompt that does not fit instead of dropping old messages.
    params = [("num_ctx", _context_length(services, record))]
    return json_response(
        {
            "license": license_text if isinstance(license_text, str) else "",
            "modelfile": modelfile(record, params, template),
            "parameters": "\n".join(f"{k:<30} {v}" for k, v in params),
            "template": template,
            "details": details(record),
            "model_info": header,
            "capabilities": capabilities(services.catalog.capabilities(record), template),
            "modified_at": modified_at(record),
        }
    )


@ollama_errors
async def delete(request: Request) -> Response:
    req = parse_body(await request.body(), DeleteRequest)
    await remove_installed(services_of(request), req.target())
    return Response(status_code=200)


@ollama_errors
async def copy(request: Request) -> Response:
    req = parse_body(await request.body(), CopyRequest)
    await asyncio.to_thread(services_of(request).registry.copy, req.source, req.destination)
    return Response(status_code=200)


async def version(request: Request) -> Response:
    return json_response({"version": OLLAMA_API_VERSION})


async def root(request: Request) -> Response:
    return PlainTextResponse(RUNNING)


def details(record: ModelRecord) -> dict[str, Any]:
    info = record.info
    return {
        "parent_model": "",
        "format": info.format,
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": parameter_size(info.parameters),
        "quantization_level": info.quantization,
    }


def capabilities(offered: frozenset[Capability], template: str) -> list[str]:
    """Ollama's names: ``completion`` or ``embedding``, and ``tools`` when the chat
    template renders tools (Ollama's own test)."""
    names = []
    if Capability.COMPLETION in offered or Capability.CHAT in offered:
        names.append("completion")
        if "tools" in template:
            names.append("tools")
    if Capability.EMBEDDINGS in offered:
        names.append("embedding")
    if Capability.RERANK in offered:
        names.append("rerank")
    if Capability.TENSOR in offered:
        names.append("tensor")
    return names


def modified_at(record: ModelRecord) -> str:
    return timestamp(int(record.created * 1e9))


def modelfile(record: ModelRecord, params: list[tuple[str, Any]], template: str) -> str:
    """A Modelfile in Ollama's layout. Without TEMPLATE: the model's template is
    jinja2 (see ``template``), not the Go template a Modelfile holds."""
    lines = [
        '# Modelfile generated by Corral, in the layout of "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {record.name}",
        "",
        f"FROM {record.path}",
    ]
    if template:
        lines.append("# TEMPLATE: the model's own jinja2 chat template (see /api/show template)")
    lines += [f"PARAMETER {k} {v}" for k, v in params]
    return "\n".join(lines) + "\n"


def _context_length(services: Services, record: ModelRecord) -> int:
    descriptor = services.catalog.for_record(record)
    return descriptor.context_length(record, services.scheduler.params_of(record))


@functools.lru_cache(maxsize=64)
def _header(path: Path) -> dict[str, Any]:
    """A model file's header without its long arrays (a few kB), read once: model
    files are content-addressed, never rewritten. Verbose reads are not kept."""
    return read_metadata(path)


routes = [
    route(
        "GET",
        "/",
        root,
        "Ollama's liveness check",
        tag=OLLAMA,
        reply_media="text/plain",
        access="public",
    ),
    route("GET", "/api/version", version, "Server version", tag=OLLAMA, access="public"),
    route("GET", "/api/tags", tags, "List installed models", tag=OLLAMA),
    route("POST", "/api/show", show, "Show a model's details", tag=OLLAMA, body=ShowRequest),
    route("GET", "/api/ps", ps, "List loaded models", tag=OLLAMA),
    route(
        "POST",
        "/api/copy",
        copy,
        "Copy a model under a new name",
        tag=OLLAMA,
        body=CopyRequest,
        access="admin",
    ),
    route(
        "DELETE",
        "/api/delete",
        delete,
        "Delete a model",
        tag=OLLAMA,
        body=DeleteRequest,
        access="admin",
    ),
    *ollama_inference.routes,
    *ollama_pull.routes,
]
