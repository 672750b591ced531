"""The gateway's services, built once per app and shared by every route."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from starlette.requests import Request

from corral.api.proxy import WorkerProxy
from corral.api.requests import client_key, request_priority
from corral.batch.batches import Batches
from corral.batch.files import FileStore
from corral.batch.runner import BatchRunner
from corral.errors import CorralError
from corral.httputil import run_until_disconnect
from corral.registry.pulls import Pulls
from corral.registry.store import USAGE_FLUSH_SECONDS, ModelRecord, Registry
from corral.scheduler.launch import Launcher, llamacpp_launcher
from corral.scheduler.scheduler import Grant, Scheduler
from corral.settings import Settings

log = logging.getLogger("corral")


@dataclass
class Gateway:
    settings: Settings
    registry: Registry
    scheduler: Scheduler
    proxy: WorkerProxy
    session: aiohttp.ClientSession
    pulls: Pulls
    files: FileStore
    batches: Batches
    batch_runner: BatchRunner
    _usage_writer: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, launcher: Launcher | None = None) -> Gateway:
        """Build the services; call inside the event loop (the HTTP session needs one)."""
        # A long prompt can take minutes before its first byte: no read timeout.
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0),
            auto_decompress=False,
        )
        scheduler = Scheduler(
            settings,
            launcher or llamacpp_launcher(settings),
            session,
            log_path=lambda name: settings.logs_dir / f"{name.replace('/', '_')}.log",
        )
        registry = Registry(settings.home, settings.database_url)
        pulls = Pulls(
            registry,
            downloads_dir=settings.home / "downloads",
            disk_reserve=settings.disk_reserve_bytes,
            max_parallel=settings.max_parallel_pulls,
        )
        proxy = WorkerProxy(session)
        files = FileStore(registry.engine, settings.home / "files", settings.max_upload_bytes)
        batches = Batches(registry.engine, files)
        runner = BatchRunner(
            batches,
            files,
            registry,
            scheduler,
            proxy,
            settings.home / "batches",
            in_flight=settings.batch_in_flight,
        )
        return cls(
            settings,
            registry,
            scheduler,
            proxy,
            session,
            pulls,
            files,
            batches,
            runner,
        )

    def start(self) -> None:
        """Run the scheduler; preload models in the background (readiness does not wait);
        resume pulls a previous run left unfinished."""
        self.scheduler.start()
        self.pulls.resume_unfinished()
        self.batch_runner.start()  # resumes batches a previous run left unfinished
        self._usage_writer = asyncio.create_task(self._write_usage(), name="usage-writer")
        declared = [r.name for r in self.registry.list() if r.params.get("preload")]
        for name in [*self.settings.preload, *declared]:
            try:
                record = self.registry.get(name)
            except CorralError as exc:
                log.error("cannot preload %s: %s", name, exc.message)
                continue
            task = asyncio.create_task(self.scheduler.preload(record))
            task.add_done_callback(_log_preload_failure)

    async def acquire(
        self, request: Request, record: ModelRecord, keep_alive: float | None
    ) -> Grant:
        """A slot for an API request: priority and key from its headers; the wait ends
        if the client leaves. Every API (OpenAI, Ollama) waits through here."""
        self.registry.touch(record.name)
        return await run_until_disconnect(
            request,
            self.scheduler.acquire(
                record,
                priority=request_priority(request, self.settings.batch_keys),
                key=client_key(request),
                keep_alive=keep_alive,
            ),
        )

    async def _write_usage(self) -> None:
        """Last-used times, written in a thread every so often (requests only note them)."""
        while True:
            await asyncio.sleep(USAGE_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self.registry.flush_usage)
            except Exception:
                log.exception("cannot record model usage")

    async def close(self) -> None:
        if self._usage_writer is not None:
            self._usage_writer.cancel()
        await asyncio.to_thread(self.pulls.close)
        await self.batch_runner.close()
        await self.scheduler.close(self.settings.worker_stop_grace + 10)
        await self.session.close()
        self.registry.close()


def _log_preload_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("preload failed: %s", task.exception())


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway
