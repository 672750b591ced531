"""Corral's own admin routes: what is loaded, and loading, unloading, reloading models.

``corral ps``, ``corral load``, ``corral stop`` and ``corral reload`` are clients of
these. Reload restarts a model with new worker parameters; requests queued for it
wait and are served by the new worker, none is dropped.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.gateway import gateway_of
from corral.httputil import json_response
from corral.protocol.parse import parse_json_object, validate


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int | None = Field(None, ge=1)
    slots: int | None = Field(None, ge=1, le=256)
    context_length: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=32)


async def ps(request: Request) -> Response:
    return json_response({"models": gateway_of(request).scheduler.snapshot()})


async def load(request: Request) -> Response:
    gateway = gateway_of(request)
    record = gateway.registry.get(request.path_params["name"])
    await gateway.scheduler.preload(record)
    return json_response({"model": record.name, "status": "loaded"})


async def unload(request: Request) -> Response:
    gateway = gateway_of(request)
    record = gateway.registry.get(request.path_params["name"])
    await gateway.scheduler.unload(record.name)
    return json_response({"model": record.name, "status": "unloaded"})


async def reload(request: Request) -> Response:
    gateway = gateway_of(request)
    record = gateway.registry.get(request.path_params["name"])
    raw = await request.body()
    changes = validate(_json_or_empty(raw), ReloadRequest).model_dump(exclude_none=True)
    params = replace(gateway.scheduler.params_of(record.name), **changes)
    await gateway.scheduler.reload(record, params)
    return json_response({"model": record.name, "status": "reloaded", "params": asdict(params)})


def _json_or_empty(raw: bytes) -> dict[str, object]:
    return parse_json_object(raw) if raw.strip() else {}


routes = [
    Route("/admin/ps", ps, methods=["GET"]),
    Route("/admin/models/{name:path}/load", load, methods=["POST"]),
    Route("/admin/models/{name:path}/unload", unload, methods=["POST"]),
    Route("/admin/models/{name:path}/reload", reload, methods=["POST"]),
]
