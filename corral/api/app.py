"""The gateway app factory. Nothing is built at import time.

Plain Starlette: the routes parse and validate bodies themselves (to answer in each
API's own error format), so FastAPI's layers would only add per-request cost.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from corral.api import (
    admin,
    anthropic,
    batches,
    files,
    health,
    keys,
    logs,
    metrics,
    ollama,
    openai,
    openapi,
    registry,
    ui,
    v2,
)
from corral.api.auth import Authenticate
from corral.api.guard import Guard
from corral.api.limits import BodyLimits
from corral.api.observe import Observe
from corral.api.services import Services
from corral.engines.catalog import Catalog
from corral.httputil import openai_error_handlers
from corral.settings import Settings


def create_app(settings: Settings, catalog: Catalog | None = None) -> Starlette:
    """The gateway; ``catalog`` is the engines it runs (default: those the settings
    and the environment name)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = Services.build(settings, catalog)
        app.state.services = services
        services.start()
        stop_grpc = None
        if settings.grpc_port:
            # gRPC's fork handlers run in every child the gateway forks to start a
            # worker, and with calls in flight they crash it (SIGSEGV between fork and
            # exec: grpc/grpc#13998). Workers exec at once and use no gRPC: turned off
            # before grpcio is imported, which is only when it is asked for.
            os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
            from corral.api import grpc_v2

            stop_grpc = await grpc_v2.serve(services, settings.host, settings.grpc_port)
        try:
            yield
        finally:
            if stop_grpc is not None:
                await stop_grpc()
            await services.close()

    return Starlette(
        routes=[
            *health.routes,
            *openai.routes,
            *ollama.routes,
            *anthropic.routes,
            *admin.routes,
            *keys.routes,
            *logs.routes,
            *metrics.routes,
            *registry.routes,
            *files.routes,
            *batches.routes,
            *v2.routes,
            *openapi.routes(),
            *ui.routes(),
        ],
        # First of the middleware: a refused request reaches no route (see guard.py);
        # then who is calling and may they (auth.py); then the bounds on a body's size
        # and pace (limits.py).
        middleware=[
            Middleware(Observe),  # outermost: counts and logs refusals too (observe.py)
            Middleware(Guard, settings=settings),
            Middleware(Authenticate),
            Middleware(BodyLimits, settings=settings),
        ],
        exception_handlers=openai_error_handlers(),
        lifespan=lifespan,
    )
