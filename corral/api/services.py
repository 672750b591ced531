"""The gateway's services, built once per app and shared by every route."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import aiohttp
from starlette.requests import Request

from corral.api.metrics import Metrics
from corral.batch.batches import Batches
from corral.batch.files import FileStore
from corral.batch.leases import Leases
from corral.batch.runner import BatchRunner
from corral.engines.catalog import Catalog, load_catalog
from corral.errors import CorralError
from corral.keys.limits import Limiter
from corral.keys.store import KeyStore
from corral.registry.pulls import Pulls
from corral.registry.store import USAGE_FLUSH_SECONDS, Registry
from corral.scheduler.runtime import Scheduler
from corral.service.inference import InferenceService
from corral.service.request_log import RequestLog
from corral.service.timeline import Timeline
from corral.service.worker_client import WorkerClient
from corral.settings import Settings

log = logging.getLogger("corral")
LIMITS_SYNC_SECONDS = 1.0  # how stale other gateways' share of a key's limits may be
REQUEST_LOG_FLUSH_SECONDS = 1.0


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    registry: Registry
    scheduler: Scheduler
    inference: InferenceService
    session: aiohttp.ClientSession
    pulls: Pulls
    files: FileStore
    batches: Batches
    batch_runner: BatchRunner
    keys: KeyStore
    limiter: Limiter
    metrics: Metrics
    request_log: RequestLog
    timeline: Timeline
    _timeline_sampler: asyncio.Task[None] | None = None
    _limits_sync: asyncio.Task[None] | None = None
    _usage_writer: asyncio.Task[None] | None = None
    _log_writer: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, catalog: Catalog | None = None) -> Services:
        """Build the services; call inside the event loop (the HTTP session needs one)."""
        catalog = catalog or load_catalog(settings.engines)
        # A long prompt can take minutes before its first byte: no read timeout.
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0),
            auto_decompress=False,
        )
        scheduler = Scheduler(
            settings,
            catalog,
            session,
            log_path=lambda name: settings.logs_dir / f"{name.replace('/', '_')}.log",
        )
        registry = Registry(settings.home, settings.database_url)
        keys = KeyStore(registry.engine)
        limiter = Limiter(registry.engine)
        metrics = Metrics()
        timeline = Timeline()
        inference = InferenceService(
            registry,
            catalog,
            scheduler,
            WorkerClient(session),
            observers=[metrics.observe_inference, timeline.observe],
            limiter=limiter,
        )
        request_log = RequestLog(
            registry.engine, settings.request_log_days, settings.request_log_max_rows
        )
        pulls = Pulls(
            registry,
            downloads_dir=settings.home / "downloads",
            disk_reserve=settings.disk_reserve_bytes,
            max_parallel=settings.max_parallel_pulls,
            allow_private=settings.allow_private_pulls,
        )
        files = FileStore(
            registry.engine,
            settings.home / "files",
            settings.max_upload_bytes,
            max_line_bytes=settings.max_body_bytes,
        )
        batches = Batches(registry.engine, files)
        runner = BatchRunner(
            batches,
            files,
            inference,
            settings.home / "batches",
            in_flight=settings.batch_in_flight,
            keys=keys,
            leases=Leases(registry.engine, settings.gateway_name, settings.batch_lease),
            chunk_lines=settings.batch_chunk,
        )
        services = cls(
            settings,
            catalog,
            registry,
            scheduler,
            inference,
            session,
            pulls,
            files,
            batches,
            runner,
            keys,
            limiter,
            metrics,
            request_log,
            timeline,
        )
        metrics.attach(services)
        return services

    def start(self) -> None:
        """Run the scheduler; preload models in the background (readiness does not wait);
        resume pulls a previous run left unfinished."""
        self.scheduler.start()
        self.pulls.resume_unfinished()
        self.batch_runner.start()  # resumes batches a previous run left unfinished
        self._usage_writer = asyncio.create_task(self._write_usage(), name="usage-writer")
        self._log_writer = asyncio.create_task(self._write_log(), name="request-log-writer")
        self._timeline_sampler = asyncio.create_task(self._sample_memory(), name="timeline")
        self._limits_sync = asyncio.create_task(self._sync_limits(), name="limits-sync")
        for name in self.preloads():
            try:
                record = self.registry.get(name)
            except CorralError as exc:
                log.error("cannot preload %s: %s", name, exc.message)
                continue
            task = asyncio.create_task(self.scheduler.preload(record))
            task.add_done_callback(_log_preload_failure)

    def preloads(self) -> list[str]:
        """The models to load at startup: CORRAL_PRELOAD's and those declared so."""
        declared = [r.name for r in self.registry.list() if r.params.get("preload")]
        names = [*self.settings.preload, *declared]
        resolved = []
        for name in names:
            try:
                resolved.append(self.registry.get(name).name)
            except CorralError:
                resolved.append(name)  # reported by start(); /ready shows it missing
        return list(dict.fromkeys(resolved))

    async def _write_usage(self) -> None:
        """Last-used times, written in a thread every so often (requests only note them)."""
        while True:
            await asyncio.sleep(USAGE_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self.registry.flush_usage)
                await asyncio.to_thread(self.limiter.flush)  # keys' daily tokens
            except Exception:
                log.exception("cannot record model usage")

    async def _write_log(self) -> None:
        """The request log's queued rows, written in a thread every second."""
        while True:
            await asyncio.sleep(REQUEST_LOG_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self.request_log.flush)
            except Exception:
                log.exception("cannot write the request log")

    def memory_now(self) -> dict[str, float]:
        """What the loaded models hold, in all, and what they may: the charts' memory."""
        loaded = [m for m in self.scheduler.snapshot() if m.state not in ("stopped", "failed")]
        budget = self.scheduler.budgets()
        out = {
            "estimated": float(sum(m.memory.estimated for m in loaded)),
            "rss": float(sum(m.memory.actual or 0 for m in loaded)),
            "budget": float(budget["memory"]),
        }
        if budget["gpus"]:
            held = (m.memory.vram_actual or m.memory.vram_estimated for m in loaded)
            out["vram"] = float(sum(held))
            out["vram_budget"] = float(sum(g["budget"] for g in budget["gpus"].values()))
        return out

    async def _sync_limits(self) -> None:
        """Per-minute limits shared with other gateways on the database, every second.
        This process has a name of its own: a restart starts its totals afresh."""
        me = f"{self.settings.gateway_name}/{os.getpid()}/{int(time.time())}"
        while True:
            await asyncio.sleep(LIMITS_SYNC_SECONDS)
            try:
                await asyncio.to_thread(self.limiter.sync, me)
            except Exception:
                log.exception("cannot share rate limits with other gateways")

    async def _sample_memory(self) -> None:
        """One memory sample per timeline bucket (the requests feed themselves)."""
        while True:
            try:
                self.timeline.sample_memory(self.memory_now())
            except Exception:
                log.exception("cannot sample memory for the timeline")
            await asyncio.sleep(self.timeline.bucket_seconds)

    async def close(self) -> None:
        tasks = (self._usage_writer, self._log_writer, self._timeline_sampler, self._limits_sync)
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.to_thread(self.pulls.close)
        await self.batch_runner.close()
        await self.scheduler.close(self.settings.worker_stop_grace + 10)
        await self.session.close()
        await asyncio.to_thread(self.limiter.flush)
        await asyncio.to_thread(self.request_log.flush)
        self.registry.close()


def _log_preload_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("preload failed: %s", task.exception())


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
