"""The gateway's services, built once per app and shared by every route."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
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
    session: aiohttp.ClientSession

    @classmethod
    def build(cls, settings: Settings, launcher: Launcher | None = None) -> Gateway:
        """Build the services; call inside the event loop (the HTTP session needs one)."""
        # A long prompt can take minutes before its first byte: no read timeout.
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0),
            auto_decompress=False,
        )
        pool = WorkerPool(
            launcher or llamacpp_launcher(settings),
            session,
            start_timeout=settings.worker_start_timeout,
            stop_grace=settings.worker_stop_grace,
            log_path=lambda name: settings.logs_dir / f"{name.replace('/', '_')}.log",
        )
        return cls(settings, ModelStore(settings.home), pool, WorkerProxy(session), session)

    async def close(self) -> None:
        await self.pool.shutdown()
        await self.session.close()


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway
