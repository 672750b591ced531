"""The loaded models and their workers.

``get`` returns a ready worker for a model, starting one if needed. Loading is
single-flight: N concurrent requests for a cold model share one start, and a
failed start fails all of them with the worker's own explanation; the next request
tries again. A worker that died is noticed on the next ``get`` and replaced.

Memory budgets, eviction, queues and keep-alive belong to the scheduler policy that
builds on this (see issue 3); this module is only the mechanism.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from corral.errors import EngineLoadError, ShuttingDown
from corral.registry.store import ModelRecord
from corral.scheduler.launch import Launcher, free_port
from corral.scheduler.process import WorkerProcess, WorkerSpec, WorkerState

log = logging.getLogger("corral.scheduler")
PORT_RETRIES = 3


class WorkerPool:
    def __init__(
        self,
        launcher: Launcher,
        session: aiohttp.ClientSession,
        *,
        start_timeout: float,
        stop_grace: float,
        log_path: Callable[[str], Any] | None = None,
    ) -> None:
        self._launcher = launcher
        self._session = session
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._log_path = log_path
        self._workers: dict[str, WorkerProcess] = {}
        self._starting: dict[str, asyncio.Task[WorkerProcess]] = {}
        self._closed = False

    async def get(self, model: ModelRecord) -> WorkerProcess:
        """A ready worker for ``model``; starts one (once) if there is none."""
        if self._closed:
            raise ShuttingDown("The server is shutting down.")
        worker = self._workers.get(model.name)
        if worker is not None and worker.state == WorkerState.READY and worker.alive:
            return worker
        task = self._starting.get(model.name)
        if task is None:
            task = asyncio.create_task(self._start(model, worker))
            self._starting[model.name] = task
            task.add_done_callback(lambda _: self._starting.pop(model.name, None))
        return await asyncio.shield(task)

    async def _start(self, model: ModelRecord, previous: WorkerProcess | None) -> WorkerProcess:
        if previous is not None:
            await previous.stop(self._stop_grace)
            self._workers.pop(model.name, None)
        for attempt in range(PORT_RETRIES):
            spec: WorkerSpec = self._launcher(model, free_port())
            log_path = self._log_path(model.name) if self._log_path else None
            worker = WorkerProcess(spec, log_path)
            try:
                await worker.start(self._session, self._start_timeout)
            except EngineLoadError:
                if "address already in use" in worker.tail().lower() and attempt + 1 < PORT_RETRIES:
                    continue
                raise
            self._workers[model.name] = worker
            log.info("model %s ready at %s", model.name, worker.base_url)
            return worker
        raise EngineLoadError(f"could not find a free port for '{model.name}'")

    def workers(self) -> list[WorkerProcess]:
        return list(self._workers.values())

    async def stop(self, name: str) -> None:
        worker = self._workers.pop(name, None)
        if worker is not None:
            await worker.stop(self._stop_grace)

    async def shutdown(self) -> None:
        """Stop every worker: SIGTERM, grace period, then SIGKILL."""
        self._closed = True
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        workers = list(self._workers.values())
        self._workers.clear()
        await asyncio.gather(*(w.stop(self._stop_grace) for w in workers))
