"""The scheduler core: every model's state, one state machine, acting only through Effects.

``SchedulerCore.handle(message)`` is the only way state changes. After each
message one pass runs, in this order:

1. fail queued requests whose queue timeout passed;
2. stop idle models whose keep-alive expired;
3. place waiting models (``policy.admit``): load, evict idle ones, or drain busy ones;
4. grant free slots to queued requests;
5. stop models that were draining and have finished.

The core never awaits, spawns or sleeps: ``Effects`` starts and stops workers,
resolves requests and tells the time, and reports back with messages (``Loaded``,
``Stopped``, ...). Tests drive it with a recording fake; ``scheduler.Scheduler``
runs it on one asyncio task. See ``design.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.engines.descriptor import EngineParams, MemoryEstimate
from corral.errors import (
    CorralError,
    InsufficientMemory,
    ModelBackingOff,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)
from corral.registry.records import ModelRecord
from corral.scheduler import policy
from corral.scheduler.process import WorkerState
from corral.scheduler.queue import FairQueue, Ticket
from corral.units import format_size, parse_keep_alive

log = logging.getLogger("corral.scheduler")
ACTIVE = (WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING, WorkerState.WAKING)
# Asleep: the process holds RAM (its weights moved there), no GPU memory.
ASLEEP = (WorkerState.FALLING_ASLEEP, WorkerState.SLEEPING)
LOADED = (*ACTIVE, *ASLEEP, WorkerState.STOPPING)
STABLE_SECONDS = 60.0  # a worker up this long before crashing resets the crash count
# A worker that dies idle this long after it was ready was killed from outside (an
# operator, the OOM killer), not by its model: that is no crash loop to back off from.
SETTLED_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Lease:
    """A granted slot on a worker; returned with ``Release`` when the request ends."""

    model: str
    worker: Any
    ticket_id: int


class Effects(Protocol):
    def now(self) -> float: ...
    def memory_budget(self, held: int) -> int:
        """Bytes models may use in all, given that our workers hold ``held`` now."""

    def gpu_budget(self, held: Mapping[int, int]) -> dict[int, policy.Gpu]:
        """What models may use on each GPU, given what our workers hold on each now
        (no GPUs: empty)."""

    def start_worker(
        self, key: str, record: ModelRecord, params: EngineParams, gpus: tuple[int, ...]
    ) -> None:
        """Start a worker for replica ``key`` of ``record``; answer ``Loaded(key, ...)``
        or ``LoadFailed(key, ...)``. (Every message's ``model`` is a replica's key:
        the model's name for its first replica, ``name#i`` for the others.)"""

    def stop_worker(self, model: str, worker: Any) -> None: ...
    def sleep_worker(self, model: str, worker: Any) -> None:
        """Put the worker to sleep; answer ``Slept`` or ``SleepFailed``."""

    def wake_worker(self, model: str, worker: Any) -> None:
        """Wake the worker; answer ``Woken`` or ``WakeFailed``."""

    def grant(self, ticket: Ticket, lease: Lease) -> None: ...
    def fail(self, ticket: Ticket, error: CorralError) -> None: ...
    def measure(self, worker: Any) -> int | None: ...
    def notify(self, waiter: Any, error: CorralError | None) -> None: ...


# --- messages -----------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    ticket: Ticket
    record: ModelRecord


@dataclass(frozen=True)
class Cancel:
    ticket: Ticket


@dataclass(frozen=True)
class Release:
    lease: Lease


@dataclass(frozen=True)
class Loaded:
    model: str
    worker: Any


@dataclass(frozen=True)
class LoadFailed:
    model: str
    error: CorralError


@dataclass(frozen=True)
class Exited:
    """A worker died without being asked to."""

    model: str
    worker: Any
    error: CorralError


@dataclass(frozen=True)
class Lost:
    """A request found its worker gone before the worker took it (refused, or found
    dead): stop counting on that worker, and make sure it is gone."""

    model: str
    worker: Any
    error: CorralError


@dataclass(frozen=True)
class Stopped:
    model: str
    worker: Any


@dataclass(frozen=True)
class Slept:
    model: str
    worker: Any


@dataclass(frozen=True)
class Woken:
    model: str
    worker: Any


@dataclass(frozen=True)
class SleepFailed:
    """Falling asleep or waking up failed: the worker is stopped instead."""

    model: str
    worker: Any
    error: CorralError


@dataclass(frozen=True)
class Preload:
    record: ModelRecord
    waiter: Any = None


@dataclass(frozen=True)
class Reload:
    record: ModelRecord
    params: EngineParams | None
    waiter: Any = None


@dataclass(frozen=True)
class Unload:
    model: str
    waiter: Any = None


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


Message = (
    Submit
    | Cancel
    | Release
    | Loaded
    | LoadFailed
    | Exited
    | Lost
    | Stopped
    | Slept
    | Woken
    | SleepFailed
    | Preload
    | Reload
    | Unload
    | Tick
    | Shutdown
)


# --- state --------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreConfig:
    keep_alive: float  # seconds idle before unloading; math.inf = forever
    max_models: int
    max_queue: int
    queue_timeout: float
    group_by_model: bool = True
    pinned: frozenset[str] = frozenset()  # canonical names
    preload: frozenset[str] = frozenset()
    # False where something else assigns GPUs (Ray gives each worker its own): the
    # core then budgets RAM only.
    place_gpus: bool = True


@dataclass
class ModelState:
    """One replica of one model (most models have one: ``replicas: N`` in corral.yaml)."""

    record: ModelRecord
    params: EngineParams
    estimate: MemoryEstimate
    keep_alive: float  # math.inf = forever
    key: str = ""  # the replica's key in SchedulerCore.models: see replica_key
    replica: int = 0
    pinned: bool = False
    preloaded: bool = False
    queue: FairQueue = field(default_factory=FairQueue)
    state: WorkerState = WorkerState.STOPPED
    worker: Any = None
    in_flight: int = 0
    last_used: float = 0.0
    ready_at: float = 0.0
    load_started: float = 0.0
    rss: int | None = None
    gpus: tuple[int, ...] = ()  # the devices it was placed on
    vram_per_device: int = 0  # what it was placed with on each
    sleeps: bool = False  # sleeps (weights to RAM) instead of stopping to free its GPUs
    wanted_since: int | None = None  # arrival number of a load wish without requests
    drain_cutoff: int | None = None  # draining: serve tickets with arrival numbers up to it
    leaving: bool = False  # unload or reload asked: finish in-flight work, then stop
    next_params: EngineParams | None = None  # reload: start again with these
    crashes: int = 0
    backoff_until: float = 0.0
    last_error: str | None = None
    load_waiters: list[Any] = field(default_factory=list)
    stop_waiters: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def load(self) -> float:
        """Requests on it and waiting for it, per slot."""
        return (self.in_flight + len(self.queue)) / self.params.slots

    @property
    def need(self) -> int:
        return max(self.estimate.total, self.rss or 0)

    @property
    def vram_need(self) -> policy.VramNeed:
        e = self.estimate
        only = self.gpus if self.state == WorkerState.SLEEPING else ()
        return policy.VramNeed(e.vram, e.vram_share, e.devices, only)

    @property
    def asleep_need(self) -> int:
        """RAM while asleep: its own, and its weights moved out of the GPU."""
        return self.need + self.estimate.vram

    def eligible(self, ticket: Ticket) -> bool:
        """May this ticket be served by the current worker?"""
        if self.leaving:
            return False
        return self.drain_cutoff is None or ticket.seq <= self.drain_cutoff

    def has_eligible(self) -> bool:
        return any(self.eligible(t) for t in self.queue)

    def wait_key(self) -> tuple[int, int]:
        """Oldest claim to be loaded: the queue's head, or the preload/reload wish."""
        keys = [t.order() for t in self.queue]
        if self.wanted_since is not None:
            keys.append((0, self.wanted_since))
        return min(keys)


def replica_key(name: str, replica: int) -> str:
    """A replica's key: the model's name for the first, ``name#i`` for the others."""
    return name if replica == 0 else f"{name}#{replica}"


def replicas_of(record: ModelRecord) -> int:
    """How many workers the model runs (``replicas: N`` in corral.yaml; 1 by default)."""
    value = record.params.get("replicas", 1)
    return value if isinstance(value, int) and value >= 1 else 1


# Routing among replicas: what not being ready weighs, in slots' worth of load.
ROUTE_PENALTY = {
    WorkerState.READY: 0.0,
    WorkerState.STARTING: 0.5,
    WorkerState.WAKING: 0.5,
    WorkerState.DRAINING: 2.0,  # it serves only what it had; the rest waits for a restart
    WorkerState.STOPPING: 2.0,
}
# A request's prefix replica counts as this much less loaded: it keeps the
# conversation unless that replica has half its slots' worth more work than another.
AFFINITY = 0.5


@dataclass
class AllOf:
    """One waiter for several replicas: answered when every one has answered (the
    first error at once)."""

    waiter: Any
    left: int

    @staticmethod
    def of(waiter: Any, count: int) -> Any:
        return waiter if waiter is None or count == 1 else AllOf(waiter, count)

    def settle(self, error: CorralError | None) -> Any:
        """The real waiter to notify now, or None (others still to answer)."""
        self.left -= 1
        if error is not None:
            self.left = 0
            return self.waiter
        return self.waiter if self.left == 0 else None


Estimator = Callable[[ModelRecord, EngineParams], MemoryEstimate]
ParamsFor = Callable[[ModelRecord], EngineParams]


@dataclass
class ModelEvents:
    """What happened to one model since the server started, for /metrics: counts only
    grow; ``load_seconds`` sums the loads' durations."""

    loads: int = 0
    load_failures: int = 0
    load_seconds: float = 0.0
    evictions: int = 0
    crashes: int = 0  # exits nobody asked for, idle kills included
    granted: int = 0
    wait_seconds: float = 0.0  # summed time granted requests waited in line


class SchedulerCore:
    def __init__(
        self,
        config: CoreConfig,
        effects: Effects,
        estimator: Estimator,
        params_for: ParamsFor,
        sleeps: Callable[[ModelRecord, EngineParams], bool] | None = None,
    ) -> None:
        self.config = config
        self.effects = effects
        self.estimator = estimator
        self.params_for = params_for
        self.sleeps = sleeps or (lambda record, params: False)
        self.models: dict[str, ModelState] = {}
        self.events: dict[str, ModelEvents] = {}  # by model; kept after unload
        self.closed = False
        self._seq = 0

    def _events(self, name: str) -> ModelEvents:
        found = self.events.get(name)
        if found is None:
            found = self.events[name] = ModelEvents()
        return found

    # --- messages -------------------------------------------------------------------

    def handle(self, message: Message) -> None:
        match message:
            case Submit():
                self._on_submit(message)
            case Cancel():
                self._on_cancel(message)
            case Release():
                self._on_release(message)
            case Loaded():
                self._on_loaded(message)
            case LoadFailed():
                self._on_loadfailed(message)
            case Exited() | Lost():
                self._on_exited(message)
            case Stopped():
                self._on_stopped(message)
            case Slept() | Woken() | SleepFailed():
                self._on_sleep(message)
            case Preload():
                self._on_preload(message)
            case Reload():
                self._on_reload(message)
            case Unload():
                self._on_unload(message)
            case Tick():
                pass
            case Shutdown():
                self._on_shutdown()
        self._schedule()

    def _on_submit(self, m: Submit) -> None:
        if self.closed:
            self.effects.fail(m.ticket, ShuttingDown("The server is shutting down."))
            return
        try:
            st = self._route(self._replicas(m.record), m.ticket)
        except CorralError as exc:  # e.g. a declared parameter its engine refuses
            self.effects.fail(m.ticket, exc)
            return
        m.ticket.model = st.key
        if not m.ticket.patient and self._waiting(st) >= self.config.max_queue:
            self.effects.fail(
                m.ticket,
                QueueFull(
                    f"{self._waiting(st)} requests are already waiting for '{st.name}'; "
                    "retry later.",
                    headers={"Retry-After": "1"},
                ),
            )
            return
        now = self.effects.now()
        if not m.ticket.patient and st.state == WorkerState.FAILED and now < st.backoff_until:
            self.effects.fail(m.ticket, self._backing_off(st, now))
            return
        m.ticket.arrived = now
        if not m.ticket.patient:
            m.ticket.deadline = now + self.config.queue_timeout
        m.ticket.seq = self._next_seq()
        st.queue.push(m.ticket)

    def _on_cancel(self, m: Cancel) -> None:
        st = self.models.get(m.ticket.model)
        if st is not None:
            st.queue.remove(m.ticket)

    def _on_release(self, m: Release) -> None:
        st = self.models.get(m.lease.model)
        if st is not None and m.lease.worker is st.worker and st.in_flight > 0:
            st.in_flight -= 1
            st.last_used = self.effects.now()

    def _on_loaded(self, m: Loaded) -> None:
        st = self.models[m.model]
        if st.state != WorkerState.STARTING or self.closed:
            self.effects.stop_worker(m.model, m.worker)
            return
        st.state, st.worker = WorkerState.READY, m.worker
        st.ready_at = st.last_used = self.effects.now()
        events = self._events(st.name)
        events.loads += 1
        events.load_seconds += max(0.0, st.ready_at - st.load_started)
        st.wanted_since = None
        st.rss = self.effects.measure(m.worker)
        log.info(
            "loaded %s: estimated %s, measured %s",
            st.name,
            format_size(st.estimate.total),
            format_size(st.rss) if st.rss else "?",
        )
        self._notify(st.load_waiters, None)

    def _on_loadfailed(self, m: LoadFailed) -> None:
        st = self.models[m.model]
        st.state, st.worker, st.wanted_since = WorkerState.FAILED, None, None
        st.gpus, st.vram_per_device = (), 0
        self._events(st.name).load_failures += 1
        self._record_failure(st, m.error, stable=False)
        self._fail_queue(st, m.error)
        self._notify(st.load_waiters, m.error)

    def _on_exited(self, m: Exited | Lost) -> None:
        st = self.models.get(m.model)
        if st is None or m.worker is not st.worker:
            return
        if isinstance(m, Lost):
            log.warning("%s: %s", st.key, m.error.message)
            self.effects.stop_worker(st.key, m.worker)  # reaps it if it lingers
        up = self.effects.now() - st.ready_at
        idle = st.in_flight == 0 and up >= SETTLED_SECONDS
        self._events(st.name).crashes += 1
        st.state, st.worker, st.in_flight, st.rss = WorkerState.FAILED, None, 0, None
        st.drain_cutoff, st.gpus, st.vram_per_device = None, (), 0
        if idle:
            st.last_error = f"{m.error.message}\n(It exited while idle: not counted as a crash.)"
            st.backoff_until = 0.0
        else:
            self._record_failure(st, m.error, stable=up >= STABLE_SECONDS)
            now = self.effects.now()
            if now < st.backoff_until:
                # Interactive requests in line hear why now, and when to retry, rather
                # than wait out the backoff in silence; batch (patient) ones wait.
                for ticket in [t for t in st.queue if not t.patient]:
                    st.queue.remove(ticket)
                    self.effects.fail(ticket, self._backing_off(st, now))
        self._notify(st.stop_waiters, None)

    def _on_stopped(self, m: Stopped) -> None:
        st = self.models.get(m.model)
        if st is None or m.worker is not st.worker:
            return
        st.state, st.worker, st.in_flight, st.rss = WorkerState.STOPPED, None, 0, None
        st.drain_cutoff, st.leaving, st.gpus, st.vram_per_device = None, False, (), 0
        if st.next_params is not None:
            st.params, st.next_params = st.next_params, None
            st.estimate = self.estimator(st.record, st.params)
            st.sleeps = self.sleeps(st.record, st.params)
            st.wanted_since = self._next_seq()
        self._notify(st.stop_waiters, None)

    def _on_sleep(self, m: Slept | Woken | SleepFailed) -> None:
        st = self.models.get(m.model)
        if st is None or m.worker is not st.worker:
            return
        match m:
            case Slept() if st.state == WorkerState.FALLING_ASLEEP:
                log.info("%s is asleep: GPU memory freed, its weights in RAM", st.name)
                st.state = WorkerState.SLEEPING
            case Woken() if st.state == WorkerState.WAKING:
                log.info("%s is awake", st.name)
                st.state = WorkerState.READY
                st.last_used = self.effects.now()
                self._notify(st.load_waiters, None)
            case SleepFailed():
                log.warning("%s: %s; stopping it instead", st.name, m.error.message)
                self._stop(st)

    def _on_preload(self, m: Preload) -> None:
        try:
            replicas = self._replicas(m.record)
        except CorralError as exc:
            self._notify([m.waiter], exc)
            return
        waiter = AllOf.of(m.waiter, len(replicas))
        for st in replicas:
            st.preloaded = True
            self._want_loaded(st, waiter)

    def _on_reload(self, m: Reload) -> None:
        try:
            replicas = self._replicas(m.record)
        except CorralError as exc:
            self._notify([m.waiter], exc)
            return
        waiter = AllOf.of(m.waiter, len(replicas))
        for st in replicas:
            params = m.params or st.params
            if st.state in (WorkerState.STOPPED, WorkerState.FAILED):
                st.params, st.estimate = params, self.estimator(st.record, params)
                st.sleeps = self.sleeps(st.record, params)
                st.backoff_until = 0.0
                self._want_loaded(st, waiter)
            else:
                st.next_params, st.leaving = params, True
                if waiter is not None:
                    st.load_waiters.append(waiter)

    def _on_unload(self, m: Unload) -> None:
        running = [
            st
            for st in self.models.values()
            if st.name == m.model and st.state not in (WorkerState.STOPPED, WorkerState.FAILED)
        ]
        if not running:
            self._notify([m.waiter], None)
            return
        waiter = AllOf.of(m.waiter, len(running))
        for st in running:
            st.leaving, st.wanted_since = True, None
            if waiter is not None:
                st.stop_waiters.append(waiter)

    def _on_shutdown(self) -> None:
        self.closed = True
        error = ShuttingDown("The server is shutting down.")
        for st in self.models.values():
            self._fail_queue(st, error)
            self._notify(st.load_waiters, error)
            st.wanted_since = None
            if st.state in (WorkerState.READY, WorkerState.DRAINING, *ASLEEP, WorkerState.WAKING):
                self._stop(st)

    # --- the pass ---------------------------------------------------------------------

    def _schedule(self) -> None:
        now = self.effects.now()
        self._expire_tickets(now)
        self._expire_keep_alive(now)
        if not self.closed:
            self._place(now)
        self._grant()
        self._stop_drained()

    def _expire_tickets(self, now: float) -> None:
        for st in self.models.values():
            for ticket in [t for t in st.queue if t.deadline is not None and t.deadline <= now]:
                st.queue.remove(ticket)
                self.effects.fail(
                    ticket,
                    QueueTimeout(
                        f"The request waited {self.config.queue_timeout:.0f} s for '{st.name}' "
                        f"(state: {st.state.value}, {st.in_flight} in flight, "
                        f"{len(st.queue)} queued) and timed out."
                    ),
                )

    def _expire_keep_alive(self, now: float) -> None:
        for st in self.models.values():
            if (
                st.state in (WorkerState.READY, WorkerState.SLEEPING)
                and not (st.pinned or st.preloaded or st.leaving)
                and st.in_flight == 0
                and not st.queue
                and now >= st.last_used + st.keep_alive
            ):
                log.info("unloading %s: idle past its keep-alive", st.name)
                self._stop(st)

    def _place(self, now: float) -> None:
        """Load waiting models in order; make room by evicting idle or draining busy ones."""
        drains: dict[str, int] = {}
        waiting = [
            st
            for st in self.models.values()
            if st.state in (WorkerState.STOPPED, WorkerState.FAILED, WorkerState.SLEEPING)
            and (st.queue or st.wanted_since is not None)
            and now >= st.backoff_until
        ]
        for st in sorted(waiting, key=lambda s: s.wait_key()):
            # Models already stopping are memory on its way back: not candidates again.
            active = [m for m in self.models.values() if m.state in ACTIVE]
            asleep = [m for m in self.models.values() if m.state in ASLEEP and m is not st]
            leaving = [m for m in self.models.values() if m.state == WorkerState.STOPPING]
            held = sum(m.rss or 0 for m in (*active, *asleep, *leaving, st) if m.worker)
            budget = policy.Budget(
                self.effects.memory_budget(held),
                self.config.max_models,
                self.gpu_budget([*active, *leaving, *asleep]),
            )
            residents = [self._resident(m) for m in (*active, *asleep)]
            # Stopping models hold their GPU memory until they are gone: a model that
            # needs it waits for them, it is neither refused nor a reason to evict more.
            on_the_way = [
                policy.Resident(
                    m.key, 0, True, m.last_used, False, m.gpus, m.vram_per_device, leaving=True
                )
                for m in leaving
                if m.gpus
            ]
            vram = st.vram_need if self.config.place_gpus else policy.VramNeed(0)
            verdict = policy.admit(st.estimate.total, [*residents, *on_the_way], budget, vram)
            if verdict.refusal is not None:
                error = InsufficientMemory(
                    f"The model '{st.name}' cannot be loaded: it {verdict.refusal}."
                )
                st.wanted_since = None
                st.last_error = error.message
                self._fail_queue(st, error)
                self._notify(st.load_waiters, error)
                continue
            if verdict.load_now:
                used = sum(r.need for r in residents) + sum(m.need for m in leaving)
                count = len(residents) + len(leaving)
                if policy.fits(used, count, st.estimate.total, budget):
                    if st.state == WorkerState.SLEEPING:
                        self._wake(st)
                    else:
                        self._start(st, verdict.devices, budget)
                    continue
                break  # it fits once the stopping models are gone: wait for them
            # A model that must go only for GPU memory, and can sleep, sleeps: its
            # process and its weights (in RAM) stay, and it wakes in seconds.
            extra_ram = 0
            for name in verdict.evict:
                victim = self.models[name]
                self._events(victim.name).evictions += 1
                used = sum(r.need for r in residents) + extra_ram + st.estimate.total
                may_sleep = (
                    victim.sleeps
                    and victim.state == WorkerState.READY
                    and victim.gpus
                    and name not in verdict.for_ram
                    and used + victim.estimate.vram <= budget.memory
                )
                if may_sleep:
                    log.info("putting idle %s to sleep to make room for %s", name, st.key)
                    extra_ram += victim.estimate.vram
                    victim.state = WorkerState.FALLING_ASLEEP
                    self.effects.sleep_worker(victim.key, victim.worker)
                else:
                    log.info("evicting idle %s to make room for %s", name, st.key)
                    self._stop(victim)
            # Grouping: the victim first serves all it had queued when draining began.
            # Strict order: only what arrived before the waiting model's oldest request.
            head = st.wait_key()[1]
            for name in verdict.wait_for:
                victim = self.models[name]
                if self.config.group_by_model:
                    cutoff = victim.drain_cutoff if victim.drain_cutoff is not None else self._seq
                else:
                    cutoff = head - 1
                drains[name] = min(drains.get(name, cutoff), cutoff)
            break  # the longest-waiting model gets the memory being freed
        for st in self.models.values():
            if st.state in (WorkerState.READY, WorkerState.DRAINING):
                drain = drains.get(st.key)
                st.state = WorkerState.DRAINING if drain is not None else WorkerState.READY
                st.drain_cutoff = drain

    def _grant(self) -> None:
        for st in self.models.values():
            if st.state not in (WorkerState.READY, WorkerState.DRAINING):
                continue
            while st.in_flight < st.params.slots:
                ticket = st.queue.take(st.eligible)
                if ticket is None:
                    break
                st.in_flight += 1
                if ticket.keep_alive is not None:
                    st.keep_alive = ticket.keep_alive
                events = self._events(st.name)
                events.granted += 1
                events.wait_seconds += max(0.0, self.effects.now() - ticket.arrived)
                self.effects.grant(ticket, Lease(st.key, st.worker, ticket.id))

    def _stop_drained(self) -> None:
        for st in self.models.values():
            if st.leaving and st.state == WorkerState.SLEEPING:  # unloaded or reloaded
                self._stop(st)
                continue
            draining = st.state == WorkerState.DRAINING or (
                st.leaving and st.state == WorkerState.READY
            )
            if draining and st.in_flight == 0 and not st.has_eligible():
                self._stop(st)

    # --- helpers ------------------------------------------------------------------------

    def _replicas(self, record: ModelRecord) -> list[ModelState]:
        """The states of ``record``'s replicas (created on first use)."""
        count = replicas_of(record)
        return [self._state_for(record, i) for i in range(count)]

    def _route(self, replicas: list[ModelState], ticket: Ticket) -> ModelState:
        """The replica a request goes to: the least loaded, counting a replica that is
        not ready as loaded (a cold one starts only when the warm ones have more work
        than slots), and the ready one its prefix maps to as less loaded than it is
        (``AFFINITY``), so that a conversation keeps finding its KV cache."""
        if len(replicas) == 1:
            return replicas[0]
        now = self.effects.now()
        preferred = None if ticket.affinity is None else ticket.affinity % len(replicas)

        def score(st: ModelState) -> tuple[float, bool]:
            penalty = ROUTE_PENALTY.get(st.state, 1.0)
            if st.leaving or (st.state == WorkerState.FAILED and now < st.backoff_until):
                penalty = 3.0
            # Only a warm replica has a cache to find again: a cold one is no pull.
            mine = st.replica == preferred and st.state == WorkerState.READY
            return st.load + penalty - (AFFINITY if mine else 0.0), not mine  # ties: its own

        return min(replicas, key=score)

    def _state_for(self, record: ModelRecord, replica: int = 0) -> ModelState:
        key = replica_key(record.name, replica)
        st = self.models.get(key)
        if st is None:
            params = self.params_for(record)
            keep_alive = self.config.keep_alive
            if record.params.get("keep_alive") is not None:
                seconds = parse_keep_alive(record.params["keep_alive"])
                keep_alive = math.inf if seconds is None else seconds
            st = ModelState(
                record=record,
                params=params,
                estimate=self.estimator(record, params),
                keep_alive=keep_alive,
                key=key,
                replica=replica,
                pinned=record.name in self.config.pinned or bool(record.params.get("pinned")),
                preloaded=record.name in self.config.preload or bool(record.params.get("preload")),
                sleeps=self.sleeps(record, params),
            )
            self.models[key] = st
        elif st.state in (WorkerState.STOPPED, WorkerState.FAILED) and record != st.record:
            st.record, st.estimate = record, self.estimator(record, st.params)
        return st

    def _want_loaded(self, st: ModelState, waiter: Any) -> None:
        if st.state == WorkerState.READY:
            self._notify([waiter], None)
            return
        if waiter is not None:
            st.load_waiters.append(waiter)
        if st.state in (WorkerState.STOPPED, WorkerState.FAILED, WorkerState.SLEEPING):
            st.wanted_since = st.wanted_since or self._next_seq()

    @staticmethod
    def _waiting(st: ModelState) -> int:
        """Requests in line that count against ``max_queue`` (patient ones do not)."""
        return sum(1 for t in st.queue if not t.patient)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _resident(self, st: ModelState) -> policy.Resident:
        protected = st.pinned or st.preloaded
        if st.state == WorkerState.SLEEPING:  # holds RAM only; stopping it frees that
            return policy.Resident(st.key, st.asleep_need, False, st.last_used, protected)
        if st.state == WorkerState.FALLING_ASLEEP:  # RAM for good, the GPU until asleep
            return policy.Resident(
                st.key,
                st.asleep_need,
                True,
                st.last_used,
                protected,
                st.gpus,
                st.vram_per_device,
                leaving=True,
            )
        busy = st.state != WorkerState.READY or st.in_flight > 0 or bool(st.queue)
        return policy.Resident(
            st.key, st.need, busy, st.last_used, protected, st.gpus, st.vram_per_device
        )

    def gpu_budget(self, holders: list[ModelState]) -> dict[int, policy.Gpu]:
        """Each GPU's budget, given what our workers on it hold now (a sleeping one
        holds nothing there)."""
        held: dict[int, int] = {}
        for m in holders:
            if m.state == WorkerState.SLEEPING:
                continue
            for index in m.gpus:
                held[index] = held.get(index, 0) + m.vram_per_device
        return self.effects.gpu_budget(held)

    def _start(
        self, st: ModelState, gpus: tuple[int, ...] = (), budget: policy.Budget | None = None
    ) -> None:
        log.info("loading %s (estimated %s)", st.key, format_size(st.estimate.total))
        st.state = WorkerState.STARTING
        st.load_started = self.effects.now()
        st.gpus = gpus
        st.vram_per_device = (
            max(st.vram_need.on(budget.gpus[i]) for i in gpus) if gpus and budget else 0
        )
        if gpus:
            log.info("%s goes on GPU %s", st.key, ",".join(map(str, gpus)))
        self.effects.start_worker(st.key, st.record, st.params, gpus)

    def _wake(self, st: ModelState) -> None:
        log.info("waking %s on GPU %s", st.key, ",".join(map(str, st.gpus)))
        st.state = WorkerState.WAKING
        st.wanted_since = None
        self.effects.wake_worker(st.key, st.worker)

    def _stop(self, st: ModelState) -> None:
        st.state = WorkerState.STOPPING
        self.effects.stop_worker(st.key, st.worker)

    def _record_failure(self, st: ModelState, error: CorralError, stable: bool) -> None:
        st.crashes = 1 if stable else st.crashes + 1
        st.last_error = error.message
        delay = 0.0 if st.crashes <= 1 else min(2.0 ** (st.crashes - 2), MAX_BACKOFF_SECONDS)
        now = self.effects.now()
        st.backoff_until = now + delay
        if delay:
            log.warning(
                "%s failed %d times in a row; next start in %.0f s", st.name, st.crashes, delay
            )

    @staticmethod
    def _backing_off(st: ModelState, now: float) -> ModelBackingOff:
        wait = max(1, math.ceil(st.backoff_until - now))
        return ModelBackingOff(
            f"The model '{st.name}' failed {st.crashes} times in a row and is held back "
            f"for {wait} s before its next start (`corral ps` shows it). Last error: "
            f"{st.last_error}",
            headers={"Retry-After": str(wait)},
        )

    def _fail_queue(self, st: ModelState, error: CorralError) -> None:
        while (ticket := st.queue.pop()) is not None:
            self.effects.fail(ticket, error)

    def _notify(self, waiters: list[Any], error: CorralError | None) -> None:
        for waiter in waiters:
            if isinstance(waiter, AllOf):
                waiter = waiter.settle(error)
            if waiter is not None:
                self.effects.notify(waiter, error)
        waiters.clear()

    def next_deadline(self) -> float | None:
        """When a pass must run even if no message comes (timeouts, keep-alive, backoff).

        Only future times: one already past that the last pass did not act on (a
        keep-alive during a long request, a backoff over) waits for a message anyway,
        and reporting it would make the caller spin.
        """
        times: list[float] = []
        for st in self.models.values():
            times.extend(t.deadline for t in st.queue if t.deadline is not None)
            if st.state == WorkerState.READY and st.keep_alive != math.inf:
                times.append(st.last_used + st.keep_alive)
            if st.state in (WorkerState.STOPPED, WorkerState.FAILED) and (
                st.queue or st.wanted_since is not None
            ):
                times.append(st.backoff_until)
        now = self.effects.now()
        future = [t for t in times if t > now]
        return min(future) if future else None

    def loaded(self) -> list[ModelState]:
        return [st for st in self.models.values() if st.state in LOADED]
