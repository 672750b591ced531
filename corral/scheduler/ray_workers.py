"""Workers placed by Ray (``CORRAL_RAY_ADDRESS``): the gateway's half.

Ray places processes, it never carries requests (its Serve proxy handled ~380
requests/s here against ~8,000 for a bare Starlette app). Each worker is a Ray
actor (``ray_host.WorkerHost``) that asks for what the engine descriptor says the
worker needs (CPUs, GPUs, memory, the model's custom resources); Ray picks the
node, the actor starts the worker there, and the gateway talks to the worker over
HTTP at the node's address, exactly as to a local one.

- **Budgets are per node.** Ray counts each node's ``memory``, ``CPU`` and ``GPU``
  resources and places an actor only where all of them are free; the scheduler's
  own RAM budget becomes the sum over the live nodes (so it still evicts least
  recently used models when the cluster as a whole is full), and GPUs are Ray's to
  assign (it sets ``CUDA_VISIBLE_DEVICES`` for the actor, which the worker inherits).
- **Node loss**: the actor dies with its node; the worker's stdin (the actor's pipe)
  closes and it exits; the gateway hears the actor's death as the worker's exit. A
  request it had accepted fails with 502, queued ones go to the worker the scheduler
  starts again wherever Ray finds room.

Ray is imported only here, and only when the first worker is placed: a gateway
without ``CORRAL_RAY_ADDRESS`` never imports it (``tests/unit/test_ray_workers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from corral.engines.descriptor import WorkerResources
from corral.errors import EngineLoadError, InsufficientMemory
from corral.scheduler.process import TAIL_LINES, WorkerProcess, WorkerSpec, WorkerState
from corral.units import format_size

log = logging.getLogger("corral.scheduler")
NODES_REFRESH_SECONDS = 2.0  # how stale the cluster's node table may be
RSS_REFRESH_SECONDS = 5.0
# Ray tells the gateway an actor died with its node ~1 s after the node's processes
# are gone; a request whose connection broke waits this long to know it was that.
LOSS_NOTICE_SECONDS = 5.0
CALL_TIMEOUT = 30.0  # one question to an actor (where, spawn, listens)
# The actor answers `wait` for the worker's whole life while others are asked.
ACTOR_CONCURRENCY = 8
NAMESPACE = "corral"

SpecFor = Callable[[str, int], WorkerSpec]


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str
    resources: Mapping[str, float]  # totals, as the node was started with


@dataclass
class RayCluster:
    """The connection to a Ray cluster, and what its nodes have (refreshed lazily,
    never on the scheduler's loop)."""

    address: str
    nodes: list[RayNode] = field(default_factory=list)
    error: str | None = None
    _connected: bool = False
    _refreshed: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _remote: Any = None

    async def connect(self) -> None:
        """Join the cluster as a driver (seconds); failures are kept and reported by
        every load, never raised into the scheduler."""
        try:
            await asyncio.to_thread(self._connect)
        except Exception as exc:
            self.error = f"Could not join the Ray cluster at {self.address}: {exc}"
            log.error("%s", self.error)

    def _connect(self) -> None:
        with self._lock:
            if self._connected:
                return
            import ray

            from corral.scheduler.ray_host import WorkerHost

            ray.init(
                address=self.address,
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
            )
            self._remote = ray.remote(WorkerHost)
            self._connected = True
            self.error = None
        self._refresh()
        log.info(
            "placing workers on the Ray cluster at %s (%d nodes)", self.address, len(self.nodes)
        )

    @property
    def stale(self) -> bool:
        """Is the node table older than ``NODES_REFRESH_SECONDS``?"""
        return self._connected and time.monotonic() - self._refreshed > NODES_REFRESH_SECONDS

    async def refresh(self, force: bool = False) -> None:
        """Reread the node table if it is stale (or ``force``)."""
        if self._connected and (self.stale or force):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._refresh)

    def _refresh(self) -> None:
        import ray

        self.nodes = [
            RayNode(n["NodeID"], n["NodeManagerAddress"], dict(n.get("Resources", {})))
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive")
        ]
        self._refreshed = time.monotonic()

    def memory(self) -> int:
        """Ray's ``memory`` resource summed over the live nodes a worker can run on
        (a head started with no CPUs and no GPUs is not one): what models may use."""
        return int(
            sum(
                n.resources.get("memory", 0)
                for n in self.nodes
                if n.resources.get("CPU", 0) or n.resources.get("GPU", 0)
            )
        )

    def infeasible(self, ask: WorkerResources) -> str | None:
        """Why no live node could ever hold ``ask`` (its totals, not what is free now),
        or None. A worker that fits some node but not now waits for Ray to place it."""
        wants = ray_resources(ask)
        if not self.nodes:
            return "the Ray cluster has no live node"
        for node in self.nodes:
            if all(node.resources.get(k, 0) >= v for k, v in wants.items()):
                return None
        have = "; ".join(
            f"{n.address} {n.node_id[:8]}: {_describe(n.resources)}" for n in self.nodes
        )
        return f"no Ray node has {_describe(wants)} (nodes: {have})"

    def actor(self, ask: WorkerResources) -> Any:
        """A new actor asking for ``ask``; Ray places it when a node has room."""
        wants = ray_resources(ask)
        custom = {k: v for k, v in wants.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = {
            "num_cpus": wants.get("CPU", 0),
            "num_gpus": wants.get("GPU", 0),
            "resources": custom,
            "max_concurrency": ACTOR_CONCURRENCY,
            "max_restarts": 0,
            # Ray starts its workers at nice 15 (the raylet comes first), and the
            # engine would inherit that: 5-8% fewer requests/s on a busy node,
            # measured. Ray's own job supervisor asks for 0 the same way.
            "runtime_env": {"env_vars": {"RAY_worker_niceness": "0"}},
        }
        if wants.get("memory"):
            options["memory"] = wants["memory"]
        return self._remote.options(**options).remote()

    def worker(self, spec_for: SpecFor, ask: WorkerResources, log_path: Path | None) -> RayWorker:
        return RayWorker(self, spec_for, ask, log_path)

    def close(self) -> None:
        if self._connected:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
            self._connected = False


def ray_resources(ask: WorkerResources) -> dict[str, float]:
    """``ask`` in Ray's resource names (memory in bytes); zero amounts left out."""
    wants = {"CPU": ask.cpus, "GPU": ask.gpus, "memory": float(ask.memory), **ask.custom}
    return {k: float(v) for k, v in wants.items() if v}


def _describe(resources: Mapping[str, float]) -> str:
    parts = []
    for key, value in sorted(resources.items()):
        if key.startswith("node:") or key.endswith("object_store_memory"):
            continue
        parts.append(f"{key}={format_size(int(value)) if key == 'memory' else f'{value:g}'}")
    return ", ".join(parts) or "nothing"


class RayWorker(WorkerProcess):
    """A worker process on a Ray node, with a local worker's interface: the
    scheduler, the worker client and ``ps`` cannot tell them apart, except that
    ``pid`` is None (it is another machine's) and ``node`` says where it runs."""

    def __init__(
        self, cluster: RayCluster, spec_for: SpecFor, ask: WorkerResources, log_path: Path | None
    ) -> None:
        super().__init__(spec_for("0.0.0.0", 0), log_path)
        self._cluster = cluster
        self._spec_for = spec_for
        self._ask = ask
        self._actor: Any = None
        self.node: str | None = None  # the Ray node id, once placed
        self.remote_pid: int | None = None
        self.lost: str | None = None  # why the actor died under its worker
        self.measured: int | None = None  # the worker's RSS on its node, refreshed

    @property
    def pid(self) -> int | None:
        return None  # not a process of this machine: local probes must not read it

    @property
    def alive(self) -> bool:
        return self._actor is not None and not self._exited.is_set()

    def gone(self) -> bool:
        return self._actor is None or self._exited.is_set()

    def exit_summary(self) -> str:
        if self.lost is not None:
            return f"lost with its Ray node: {self.lost}"
        return super().exit_summary()

    async def wait_exited(self, timeout: float) -> bool:
        return await super().wait_exited(max(timeout, LOSS_NOTICE_SECONDS))

    async def start(self, session: aiohttp.ClientSession, timeout: float) -> None:
        timeout = self.spec.start_timeout or timeout
        deadline = time.monotonic() + timeout
        if self._cluster.error is not None:
            raise EngineLoadError(self._cluster.error)
        why = self._cluster.infeasible(self._ask)
        if why is not None:  # a node may have joined since the table was read
            await self._cluster.refresh(force=True)
            why = self._cluster.infeasible(self._ask)
        if why is not None:
            raise InsufficientMemory(f"The model '{self.spec.model}' cannot be placed: {why}.")
        self._actor = self._cluster.actor(self._ask)
        try:
            try:
                address, port, node = await asyncio.wait_for(
                    _awaitable(self._actor.where.remote()), timeout
                )
            except TimeoutError:
                raise EngineLoadError(
                    f"No Ray node had room for '{self.spec.model}' "
                    f"({_describe(ray_resources(self._ask))}) within {timeout:.0f} s."
                ) from None
            self.spec = self._spec_for(address, port)
            self.node = node
            self.remote_pid = await asyncio.wait_for(
                _awaitable(
                    self._actor.spawn.remote(
                        list(self.spec.argv),
                        dict(self.spec.env),
                        str(self._log_path) if self._log_path else None,
                    )
                ),
                CALL_TIMEOUT,
            )
            log.info(
                "worker for %s started on Ray node %s (%s, pid %s there)",
                self.spec.model,
                node[:8],
                address,
                self.remote_pid,
            )
            self._tasks = [
                asyncio.create_task(self._wait_exit()),
                asyncio.create_task(self._measure()),
            ]
            await self._wait_ready(session, max(1.0, deadline - time.monotonic()))
        except BaseException:
            await self.stop(grace=1.0)
            raise
        self.state = WorkerState.READY
        self.ready_at = time.time()

    async def _wait_exit(self) -> None:
        try:
            code, tail = await _awaitable(self._actor.wait.remote())
            self.returncode = int(code)
            self._tail.extend(str(tail).splitlines()[-TAIL_LINES:])
        except Exception as exc:  # the actor died: its node is gone (or was stopped)
            self.lost = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self.state not in (WorkerState.STOPPING, WorkerState.STOPPED):
            self.state = WorkerState.FAILED
            log.warning(
                "worker for %s on Ray node %s ended (%s); its last output:\n%s",
                self.spec.model,
                (self.node or "?")[:8],
                self.exit_summary(),
                self.tail(),
            )
        self._exited.set()

    async def _measure(self) -> None:
        """Keep ``measured`` current (the scheduler reads it without waiting)."""
        while not self._exited.is_set():
            with contextlib.suppress(Exception):
                self.measured = await asyncio.wait_for(
                    _awaitable(self._actor.rss.remote()), CALL_TIMEOUT
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), RSS_REFRESH_SECONDS)

    async def _drain_output(self) -> None:
        """The last output arrives with the exit (``wait``'s answer)."""

    def _listens_on_its_port(self) -> bool:
        import ray

        try:
            return bool(ray.get(self._actor.listens.remote(self.spec.port), timeout=CALL_TIMEOUT))
        except Exception:
            return True  # unknown: taken on trust, as where sockets cannot be read

    async def stop(self, grace: float) -> None:
        """Stop the worker on its node, then the actor (Ray frees its resources)."""
        if self._actor is None:
            self.state = WorkerState.STOPPED
            return
        if self.state != WorkerState.FAILED:
            self.state = WorkerState.STOPPING
        if not self._exited.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_awaitable(self._actor.stop.remote(grace)), grace + 10)
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self._actor, no_restart=True)
        if self._tasks and not await super().wait_exited(5.0):
            self.lost = self.lost or "stopped"
            self._exited.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.state == WorkerState.STOPPING:
            self.state = WorkerState.STOPPED


def _awaitable(ref: Any) -> Any:
    """A Ray ObjectRef as an asyncio future of this loop."""
    return asyncio.wrap_future(ref.future())
