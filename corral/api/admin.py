"""Corral's own admin routes: what is loaded, and loading, unloading, reloading models.

``corral ps``, ``corral load``, ``corral stop`` and ``corral reload`` are clients of
these. Reload restarts a model with new worker parameters (any of its engine's, each
checked by the engine's own parameter model: a bad one is a 400 naming it); requests
queued for it wait and are served by the new worker, none is dropped.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from corral.api.services import services_of
from corral.api.spec import ADMIN, route
from corral.engines import plan as fit
from corral.errors import InvalidRequest
from corral.httputil import json_response
from corral.protocol.parse import parse_body, parse_json_object
from corral.protocol.plan import PlanRequest
from corral.scheduler.machine import machine_facts


async def ps(request: Request) -> Response:
    snapshot = services_of(request).scheduler.snapshot()
    return json_response({"models": [asdict(status) for status in snapshot]})


async def load(request: Request) -> Response:
    services = services_of(request)
    record = services.registry.get(request.path_params["name"])
    await services.scheduler.preload(record)
    return json_response({"model": record.name, "status": "loaded"})


async def unload(request: Request) -> Response:
    services = services_of(request)
    record = services.registry.get(request.path_params["name"])
    await services.scheduler.unload(record.name)
    return json_response({"model": record.name, "status": "unloaded"})


async def reload(request: Request) -> Response:
    services = services_of(request)
    record = services.registry.get(request.path_params["name"])
    raw = await request.body()
    changes = parse_json_object(raw) if raw.strip() else {}
    descriptor = services.catalog.for_record(record)
    current = services.scheduler.params_of(record)
    params = services.catalog.merge(descriptor, current, changes=changes)
    await services.scheduler.reload(record, params)
    return json_response(
        {"model": record.name, "status": "reloaded", "params": params.model_dump()}
    )


async def plan(request: Request) -> Response:
    """How a model fits on a machine, and why, without loading it: weights per
    quantization, the KV cache per token, where llama.cpp and vLLM would put what,
    the longest context that fits and the tokens/s to expect."""
    services = services_of(request)
    ask = parse_body(await request.body(), PlanRequest)
    try:
        if ask.model is not None:
            record = services.registry.get(ask.model)
            shape = await asyncio.to_thread(fit.shape_of_record, record)
        else:
            shape = fit.shape_from_config(ask.config or {}, "config")
        machine = await asyncio.to_thread(machine_facts, ask)
        quants = tuple(ask.quants) if ask.quants else None
        result = fit.plan(shape, machine, ask.context, ask.slots, quants)
    except (fit.PlanError, KeyError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"Cannot plan this model: {exc}", param="model") from None
    return json_response(result.to_dict())


routes = [
    route("GET", "/admin/ps", ps, "Loaded models: memory, slots, queue, expiry", tag=ADMIN),
    route(
        "POST",
        "/admin/plan",
        plan,
        "How a model fits on a machine (GPU, RAM), without loading it",
        tag=ADMIN,
        body=PlanRequest,
    ),
    route(
        "POST",
        "/admin/models/{name:path}/load",
        load,
        "Load a model now (kept until stopped)",
        tag=ADMIN,
    ),
    route(
        "POST",
        "/admin/models/{name:path}/unload",
        unload,
        "Unload a model once its in-flight requests are done",
        tag=ADMIN,
    ),
    route(
        "POST",
        "/admin/models/{name:path}/reload",
        reload,
        "Restart a model with new engine parameters (body: the parameters to change)",
        tag=ADMIN,
    ),
]
