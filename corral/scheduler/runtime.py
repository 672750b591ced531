"""The scheduler as the gateway uses it: one asyncio task running ``SchedulerCore``.

Routes call ``acquire`` (wait in line for a slot on a ready worker) and release
the returned ``Grant`` when the response is done; admin routes call ``preload``,
``reload`` and ``unload``. All of them only post messages: the task owns the core,
so no state is shared between coroutines and nothing needs a lock. Worker
processes are started and stopped by ``_ProcessEffects`` in tasks of their own,
which report back with messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from corral.engines.catalog import Catalog
from corral.engines.descriptor import EngineParams
from corral.errors import (
    CorralError,
    EngineError,
    EngineLoadError,
    PortTaken,
    QueueTimeout,
    WorkerCrashed,
    new_request_id,
)
from corral.registry.names import canonical_name
from corral.registry.records import ModelRecord
from corral.scheduler import core, policy
from corral.scheduler.core import CoreConfig, Lease, Message, ModelEvents, SchedulerCore
from corral.scheduler.gpus import GpuProbe, load_gpu_probe
from corral.scheduler.launch import free_port, worker_spec
from corral.scheduler.memory import MemoryProbe, SystemMemory, process_tree
from corral.scheduler.process import WorkerProcess, WorkerSpec, WorkerState
from corral.scheduler.queue import Priority, Ticket
from corral.scheduler.ray_workers import RayCluster, RayWorker
from corral.settings import Settings

log = logging.getLogger("corral.scheduler")
PORT_RETRIES = 3
SLEEP_TIMEOUT = 300.0  # seconds to fall asleep or wake (vLLM moves its weights over PCIe)
# The core fails a ticket at its queue deadline; the route gives up on its own this
# much later, should the core not (a bug, a stuck loop): no request waits unbounded.
OUTER_GRACE = 5.0


@dataclass
class Grant:
    """A slot on a ready worker. ``release`` it exactly when the response is finished."""

    lease: Lease
    _post: Callable[[Message], None]
    _released: bool = field(default=False, init=False)

    @property
    def worker(self) -> WorkerProcess:
        worker: WorkerProcess = self.lease.worker
        return worker

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._post(core.Release(self.lease))

    def lost(self, error: CorralError) -> None:
        """The worker was found gone before it took the request: release the slot,
        and have the scheduler start a new worker rather than grant this one again."""
        if not self._released:
            self._post(core.Lost(self.lease.model, self.lease.worker, error))
        self.release()


@dataclass(frozen=True)
class MemoryStatus:
    estimated: int
    actual: int | None
    estimate_parts: dict[str, int]
    # GPU memory: what it was placed with (all its devices), what NVML says it holds.
    vram_estimated: int = 0
    vram_actual: int | None = None
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelStatus:
    """One model as ``ps`` shows it."""

    model: str
    engine: str
    state: str
    pid: int | None
    url: str | None
    memory: MemoryStatus
    slots: dict[str, int]
    queued: int
    idle_seconds: float
    expires_at: float | None
    keep_alive: float | None
    pinned: bool
    preloaded: bool
    params: dict[str, Any]
    crashes: int
    last_error: str | None
    # Seconds until a model held back after repeated crashes may start again.
    retry_in: float | None = None
    replica: int = 0  # which of its replicas (corral.yaml's replicas: N)
    node: str | None = None  # the Ray node it runs on (CORRAL_RAY_ADDRESS)


@dataclass(frozen=True)
class WorkerStatus:
    """One running worker as ``/health`` shows it (cheap: no memory probe)."""

    model: str
    state: str
    pid: int | None
    url: str


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        session: aiohttp.ClientSession,
        probe: MemoryProbe | None = None,
        log_path: Callable[[str], Any] | None = None,
        gpus: GpuProbe | None = None,
    ) -> None:
        keep_alive = settings.keep_alive_seconds
        config = CoreConfig(
            keep_alive=math.inf if keep_alive is None else keep_alive,
            max_models=settings.max_loaded_models,
            max_queue=settings.max_queue,
            queue_timeout=settings.queue_timeout,
            group_by_model=settings.group_by_model,
            pinned=frozenset(canonical_name(n) for n in settings.pinned),
            preload=frozenset(canonical_name(n) for n in settings.preload),
            place_gpus=settings.ray_address is None,
        )
        # Workers on a Ray cluster instead of local processes (ray_workers.py).
        self._cluster = RayCluster(settings.ray_address) if settings.ray_address else None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._queue_timeout = settings.queue_timeout
        self.catalog = catalog
        self._effects = _ProcessEffects(
            settings,
            catalog,
            session,
            probe or SystemMemory(),
            self._post,
            log_path,
            gpus or load_gpu_probe(settings.gpu_probe),
            self._cluster,
        )
        self._core = SchedulerCore(
            config, self._effects, catalog.estimate, catalog.params, catalog.sleeps
        )
        self._task: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()  # set once shut down with no worker left

    # --- what routes call -------------------------------------------------------------

    async def acquire(
        self,
        record: ModelRecord,
        *,
        priority: Priority = Priority.INTERACTIVE,
        key: str = "anonymous",
        keep_alive: float | None = None,
        patient: bool = False,
        affinity: int | None = None,
    ) -> Grant:
        """Wait in line for a slot on a ready worker for ``record``; ``patient`` waits
        for room in the queue and has no queue timeout (the batch runner's requests);
        ``affinity`` (a hash of the prompt's start) picks among the model's replicas."""
        ticket = Ticket(
            record.name,
            priority=priority,
            key=key,
            keep_alive=keep_alive,
            patient=patient,
            affinity=affinity,
        )
        future = self._effects.expect(ticket)
        self._post(core.Submit(ticket, record))
        limit = None if patient else self._queue_timeout + OUTER_GRACE
        try:
            lease = await asyncio.wait_for(asyncio.shield(future), limit)
        except (asyncio.CancelledError, TimeoutError) as exc:
            self._post(core.Cancel(ticket))
            # A lease granted after all (now or later) goes straight back.
            future.add_done_callback(self._release_unclaimed)
            if isinstance(exc, TimeoutError):
                raise QueueTimeout(
                    f"The request waited {limit:.0f} s for '{record.name}' without being "
                    "served or failed by the scheduler; the server log may say why."
                ) from None
            raise
        return Grant(lease, self._post)

    def _release_unclaimed(self, future: asyncio.Future[Lease]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._post(core.Release(future.result()))

    async def preload(self, record: ModelRecord) -> None:
        await self._wait(lambda waiter: core.Preload(record, waiter))

    async def reload(self, record: ModelRecord, params: EngineParams | None) -> None:
        await self._wait(lambda waiter: core.Reload(record, params, waiter))

    async def unload(self, name: str) -> None:
        await self._wait(lambda waiter: core.Unload(name, waiter))

    def params_of(self, record: ModelRecord) -> EngineParams:
        """The parameters ``record``'s worker runs (or would start) with."""
        st = self._core.models.get(record.name)
        return st.params if st is not None else self.catalog.params(record)

    def events(self) -> dict[str, ModelEvents]:
        """What happened to each model since the start (loads, crashes...), for /metrics."""
        return dict(self._core.events)

    def workers(self) -> list[WorkerStatus]:
        """The running workers, cheaply (no memory probe): what ``/health`` reports."""
        return [
            WorkerStatus(st.name, st.state.value, st.worker.pid, st.worker.base_url)
            for st in self._core.models.values()
            if st.worker is not None
        ]

    def budgets(self) -> dict[str, Any]:
        """What models may use in all, now: RAM, and each GPU's memory (the dashboard)."""
        loaded = self._core.loaded()
        held = sum(st.rss or 0 for st in loaded)
        gpus = self._core.gpu_budget(loaded)
        return {
            "memory": self._effects.memory_budget(held),
            "gpus": {i: {"budget": g.budget, "total": g.total} for i, g in gpus.items()},
        }

    def snapshot(self) -> list[ModelStatus]:
        """What ``ps`` shows; read on the loop's thread, between messages."""
        now, wall = time.monotonic(), time.time()
        out: list[ModelStatus] = []
        for st in self._core.models.values():
            if st.state == WorkerState.STOPPED and not st.queue and not st.last_error:
                continue
            worker: WorkerProcess | None = st.worker
            idle = now - st.last_used if st.in_flight == 0 and not st.queue else 0.0
            expires = (
                None
                if st.keep_alive == math.inf or st.pinned or st.preloaded
                else wall + max(0.0, st.last_used + st.keep_alive - now)
            )
            out.append(
                ModelStatus(
                    model=st.name,
                    engine=self.catalog.for_record(st.record).name,
                    state=st.state.value,
                    pid=worker.pid if worker else None,
                    url=worker.base_url if worker else None,
                    memory=MemoryStatus(
                        estimated=st.estimate.total,
                        actual=self._effects.measure(worker) if worker else None,
                        estimate_parts={
                            "weights": st.estimate.weights,
                            "kv_cache": st.estimate.kv_cache,
                            "buffers": st.estimate.buffers,
                            "process": st.estimate.process,
                            "prompt_cache": st.estimate.prompt_cache,
                            "vram": st.estimate.vram,
                        },
                        vram_estimated=st.vram_per_device * len(st.gpus),
                        vram_actual=self._effects.measure_vram(worker) if st.gpus else None,
                        gpus=st.gpus,
                    ),
                    slots={"busy": st.in_flight, "total": st.params.slots},
                    queued=len(st.queue),
                    idle_seconds=round(idle, 1),
                    expires_at=expires,
                    keep_alive=None if st.keep_alive == math.inf else st.keep_alive,
                    pinned=st.pinned,
                    preloaded=st.preloaded,
                    params=st.params.model_dump(),
                    crashes=st.crashes,
                    last_error=st.last_error,
                    retry_in=(
                        round(st.backoff_until - now, 1)
                        if st.state == WorkerState.FAILED and st.backoff_until > now
                        else None
                    ),
                    replica=st.replica,
                    node=worker.node if isinstance(worker, RayWorker) else None,
                )
            )
        return out

    # --- the task -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def close(self, timeout: float) -> None:
        """Fail what is queued, stop every worker, and wait for them to be gone."""
        self._post(core.Shutdown())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)
        await self._effects.stop_everything()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.close)

    def _post(self, message: Message) -> None:
        self._inbox.put_nowait(message)

    async def _run(self) -> None:
        if self._cluster is not None:  # messages wait in the inbox meanwhile
            await self._cluster.connect()
        while True:
            message: Message
            if not self._inbox.empty():
                message = self._inbox.get_nowait()
            else:
                deadline = self._core.next_deadline()
                timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
                try:
                    message = await asyncio.wait_for(self._inbox.get(), timeout)
                except TimeoutError:
                    message = core.Tick()
            try:
                self._core.handle(message)
            except Exception:  # a bug must not stop every future request from being served
                log.exception("scheduler failed handling %s", type(message).__name__)
                self._fail_sender(message)
            if self._core.closed and not self._core.loaded():
                self._drained.set()

    def _fail_sender(self, message: Message) -> None:
        """Whoever waits on a message the core failed on hears so, never waits on."""
        error = EngineError("The scheduler failed on this request; the server log has why.")
        match message:
            case core.Submit():
                self._effects.fail(message.ticket, error)
            case core.Preload() | core.Reload() | core.Unload() if message.waiter is not None:
                self._effects.notify(message.waiter, error)

    async def _wait(self, make: Callable[[Any], Message]) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._post(make(waiter))
        await waiter


class _ProcessEffects:
    """The core's effects, for real: worker processes, futures, the clock, the memory probe."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        session: aiohttp.ClientSession,
        probe: MemoryProbe,
        post: Callable[[Message], None],
        log_path: Callable[[str], Any] | None,
        gpus: GpuProbe,
        cluster: RayCluster | None = None,
    ) -> None:
        self._settings = settings
        self._cluster = cluster
        self._gpus = gpus
        self._catalog = catalog
        self._session = session
        self._probe = probe
        self._post = post
        self._log_path = log_path
        self._futures: dict[int, asyncio.Future[Lease]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers: set[WorkerProcess] = set()

    def expect(self, ticket: Ticket) -> asyncio.Future[Lease]:
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._futures[ticket.id] = future
        return future

    def now(self) -> float:
        return time.monotonic()

    def memory_budget(self, held: int) -> int:
        if self._cluster is not None:
            # Ray checks each node's own memory; this is the cluster's, for eviction.
            # Not joined: no budget to refuse by, so the load fails saying why.
            if self._cluster.error is not None:
                return 1 << 62
            if self._cluster.stale:  # reread off the loop; this pass uses what is known
                self._spawn(self._cluster.refresh())
            return self._cluster.memory()
        configured = self._settings.memory_budget_bytes
        if configured is not None:
            return configured
        return self._probe.available() + held - self._settings.memory_reserve_bytes

    def measure(self, worker: Any) -> int | None:
        if isinstance(worker, RayWorker):
            return worker.measured
        return self._probe.rss(worker.pid) if worker is not None and worker.pid else None

    def gpu_budget(self, held: Mapping[int, int]) -> dict[int, policy.Gpu]:
        if self._cluster is not None:
            return {}  # Ray assigns GPUs to workers on their nodes
        configured = self._settings.vram_budget_bytes
        reserve = self._settings.vram_reserve_bytes
        # Free now, plus what our own workers hold (estimated), never more than the
        # card: an estimate above what a worker really uses must not make room.
        return {
            d.index: policy.Gpu(
                configured
                if configured is not None
                else min(d.total, d.total - d.used + held.get(d.index, 0)) - reserve,
                d.total,
            )
            for d in self._gpus.devices()
        }

    def measure_vram(self, worker: WorkerProcess | None) -> int | None:
        """GPU memory the worker's processes hold (a foreign server's children too)."""
        if worker is None or not worker.pid:
            return None
        return self._gpus.process_memory(process_tree(worker.pid))

    def grant(self, ticket: Ticket, lease: Lease) -> None:
        future = self._futures.pop(ticket.id, None)
        if future is None or future.done():
            self._post(core.Release(lease))  # the client left while the grant was on its way
        else:
            future.set_result(lease)

    def fail(self, ticket: Ticket, error: CorralError) -> None:
        future = self._futures.pop(ticket.id, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def notify(self, waiter: Any, error: CorralError | None) -> None:
        if waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)

    def start_worker(
        self, key: str, record: ModelRecord, params: EngineParams, gpus: tuple[int, ...]
    ) -> None:
        self._spawn(self._start(key, record, params, gpus))

    def stop_worker(self, model: str, worker: Any) -> None:
        self._spawn(self._stop(model, worker))

    def sleep_worker(self, model: str, worker: Any) -> None:
        self._spawn(self._switch(model, worker, asleep=True))

    def wake_worker(self, model: str, worker: Any) -> None:
        self._spawn(self._switch(model, worker, asleep=False))

    async def _switch(self, model: str, worker: WorkerProcess, asleep: bool) -> None:
        """POST the worker's sleep (or wake) route; awake, it must be healthy again."""
        path = worker.spec.sleep_path if asleep else worker.spec.wake_path
        what = "fall asleep" if asleep else "wake up"
        try:
            if path is None:
                raise EngineError(f"the worker for '{model}' has no route to {what}")
            timeout = aiohttp.ClientTimeout(total=SLEEP_TIMEOUT)
            async with self._session.post(worker.base_url + path, timeout=timeout) as reply:
                if reply.status >= 300:
                    text = (await reply.text())[:300]
                    raise EngineError(f"{path} answered {reply.status}: {text}")
            if not asleep:
                await worker.wait_healthy(self._session, SLEEP_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError, EngineError, EngineLoadError) as exc:
            message = exc.message if isinstance(exc, CorralError) else repr(exc)
            error = EngineError(f"The worker for '{model}' could not {what}: {message}")
            self._post(core.SleepFailed(model, worker, error))
            return
        self._post(core.Slept(model, worker) if asleep else core.Woken(model, worker))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("worker task failed", exc_info=task.exception())

    async def _start(
        self, key: str, record: ModelRecord, params: EngineParams, gpus: tuple[int, ...]
    ) -> None:
        for attempt in range(PORT_RETRIES):
            try:
                worker = self._new_worker(key, record, params, gpus)
            except CorralError as exc:  # the engine cannot say how (no command set...)
                self._post(core.LoadFailed(key, exc))
                return
            self._workers.add(worker)
            try:
                await worker.start(self._session, self._settings.worker_start_timeout)
            except CorralError as exc:
                self._workers.discard(worker)
                taken = (
                    isinstance(exc, PortTaken) or "address already in use" in worker.tail().lower()
                )
                if taken and attempt + 1 < PORT_RETRIES:
                    log.warning("%s; starting it on another port", exc.message)
                    continue
                self._post(core.LoadFailed(key, exc))
                return
            except Exception:  # spawning itself failed (e.g. out of file descriptors)
                self._workers.discard(worker)
                request_id = new_request_id()
                log.exception("could not start the worker for %s [%s]", record.name, request_id)
                error = EngineLoadError(
                    f"Could not start the worker for '{record.name}' (request id "
                    f"{request_id}); the server log has why."
                )
                self._post(core.LoadFailed(key, error))
                return
            self._post(core.Loaded(key, worker))
            self._spawn(self._watch(key, worker))
            return

    def _new_worker(
        self, key: str, record: ModelRecord, params: EngineParams, gpus: tuple[int, ...]
    ) -> WorkerProcess:
        """A worker not started yet: a local process, or one Ray is to place."""
        log_path = self._log_path(key) if self._log_path else None
        if self._cluster is None:
            spec = worker_spec(self._catalog, self._settings, record, params, free_port(), gpus)
            return WorkerProcess(spec, log_path)

        def spec_on(host: str, port: int) -> WorkerSpec:
            return worker_spec(self._catalog, self._settings, record, params, port, host=host)

        ask = self._catalog.resources(record, params)
        return self._cluster.worker(spec_on, ask, log_path)

    async def _watch(self, model: str, worker: WorkerProcess) -> None:
        await worker.wait()
        if worker.state == WorkerState.FAILED:
            self._post(
                core.Exited(
                    model,
                    worker,
                    WorkerCrashed(
                        f"The worker for '{model}' ended ({worker.exit_summary()}). "
                        f"Its last output:\n{worker.tail()}"
                    ),
                )
            )

    async def _stop(self, model: str, worker: WorkerProcess) -> None:
        await worker.stop(self._settings.worker_stop_grace)
        self._workers.discard(worker)
        self._post(core.Stopped(model, worker))

    async def stop_everything(self) -> None:
        """Last resort at shutdown: whatever is still running is stopped now."""
        await asyncio.gather(
            *(w.stop(self._settings.worker_stop_grace) for w in list(self._workers)),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
