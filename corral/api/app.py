"""The gateway app factory. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from corral import __version__
from corral.api import health, openai
from corral.api.errors import install_error_handlers
from corral.api.gateway import Gateway
from corral.scheduler.launch import Launcher
from corral.settings import Settings


def create_app(settings: Settings, launcher: Launcher | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway.build(settings, launcher)
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai.router)
    return app
