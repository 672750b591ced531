"""The gateway's services, built once per app and shared by every route."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from starlette.requests import Request

from corral.api.proxy import WorkerProxy
from corral.registry.store import ModelStore
from corral.scheduler.launch import Launcher, llamacpp_launcher
from corral.scheduler.pool import WorkerPool
from corral.settings import Settings


@dataclass
class Gateway:
    settings: Settings
    store: ModelStore
    pool: WorkerPool
    proxy: WorkerProxy
    client: httpx.AsyncClient

    @classmethod
    def build(cls, settings: Settings, launcher: Launcher | None = None) -> Gateway:
        # Generation can take minutes between bytes only while a long prompt is
        # processed; reads therefore have no timeout, connects do.
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        pool = WorkerPool(
            launcher or llamacpp_launcher(settings),
            client,
            start_timeout=settings.worker_start_timeout,
            stop_grace=settings.worker_stop_grace,
            log_path=lambda name: settings.logs_dir / f"{name.replace('/', '_')}.log",
        )
        return cls(settings, ModelStore(settings.home), pool, WorkerProxy(client), client)

    async def close(self) -> None:
        await self.pool.shutdown()
        await self.client.aclose()


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway
