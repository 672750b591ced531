"""The gateway app factory. Nothing is built at import time.

Plain Starlette: the routes parse and validate bodies themselves (to answer in each
API's own error format), so FastAPI's layers would only add per-request cost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from corral.api import admin, batches, files, health, ollama, openai, registry
from corral.api.gateway import Gateway
from corral.httputil import openai_error_handlers
from corral.scheduler.launch import Launcher
from corral.settings import Settings


def create_app(settings: Settings, launcher: Launcher | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = Gateway.build(settings, launcher)
        app.state.gateway = gateway
        gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    return Starlette(
        routes=[
            *health.routes,
            *openai.routes,
            *ollama.routes,
            *admin.routes,
            *registry.routes,
            *files.routes,
            *batches.routes,
        ],
        exception_handlers=openai_error_handlers(),
        lifespan=lifespan,
    )
