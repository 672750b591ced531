"""Liveness and a short status of the loaded workers."""

from __future__ import annotations

from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from corral import __version__
from corral.api.services import services_of
from corral.api.spec import HEALTH, route
from corral.httputil import json_response


async def health(request: Request) -> Response:
    services = services_of(request)
    workers = [asdict(worker) for worker in services.scheduler.workers()]
    return json_response({"status": "ok", "version": __version__, "workers": workers})


routes = [route("GET", "/health", health, "Liveness, version and the workers", tag=HEALTH)]
