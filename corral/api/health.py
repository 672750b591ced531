"""Liveness and a short status of the loaded workers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral import __version__
from corral.api.gateway import gateway_of
from corral.httputil import json_response


async def health(request: Request) -> Response:
    gateway = gateway_of(request)
    workers = gateway.scheduler.workers()
    return json_response({"status": "ok", "version": __version__, "workers": workers})


routes = [Route("/health", health, methods=["GET"])]
