"""Liveness and a short status of the loaded workers."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from corral import __version__
from corral.api.services import services_of
from corral.api.spec import HEALTH, route
from corral.errors import CorralError
from corral.httputil import json_response


async def health(request: Request) -> Response:
    services = services_of(request)
    workers = [asdict(worker) for worker in services.scheduler.workers()]
    return json_response({"status": "ok", "version": __version__, "workers": workers})


async def ready(request: Request) -> Response:
    """Ready to serve: the registry answers and every model declared for preloading is
    loaded. ``?model=NAME`` asks about one model instead: ready when it is loaded. 503,
    with what is missing, when not."""
    services = services_of(request)
    checks: dict[str, str] = {}
    try:
        await asyncio.to_thread(services.registry.list)
        checks["registry"] = "ok"
    except Exception as exc:  # any failure to read the registry is "not ready"
        checks["registry"] = f"failed: {type(exc).__name__}"
    states = {m.model: m.state for m in services.scheduler.snapshot()}
    asked = request.query_params.get("model")
    if asked is not None:
        try:
            name = services.registry.get(asked).name
        except CorralError as exc:
            checks["model"] = exc.message
        else:
            checks[name] = states.get(name, "not loaded")
    else:
        for name in services.preloads():
            checks[name] = states.get(name, "not loaded")
    ok = all(value in ("ok", "ready", "draining") for value in checks.values())
    body = {"status": "ready" if ok else "not_ready", "checks": checks}
    return json_response(body, status=200 if ok else 503)


routes = [
    route("GET", "/health", health, "Liveness, version and the workers", tag=HEALTH),
    route("GET", "/ready", ready, "Readiness: registry, preloads, or one model", tag=HEALTH),
]
