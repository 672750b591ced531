"""The scheduler core, driven message by message with a recording fake (no processes)."""

from __future__ import annotations

import math

import pytest

from corral.engines.catalog import Catalog
from corral.engines.descriptor import MemoryEstimate
from corral.engines.llamacpp.descriptor import LlamaCppParams, descriptor
from corral.errors import (
    EngineLoadError,
    InsufficientMemory,
    ModelBackingOff,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    WorkerCrashed,
)
from corral.registry.records import ModelRecord
from corral.scheduler.core import (
    Cancel,
    CoreConfig,
    Exited,
    Loaded,
    LoadFailed,
    Preload,
    Release,
    Reload,
    SchedulerCore,
    Shutdown,
    SleepFailed,
    Slept,
    Stopped,
    Submit,
    Tick,
    Unload,
    Woken,
)
from corral.scheduler.process import WorkerState
from corral.scheduler.queue import Priority, Ticket
from tests.support.fake_effects import FakeEffects, FakeWorker, GiB, estimate_by_size, record

PARAMS = LlamaCppParams(threads=1, slots=2, context_length=2048, batch_size=512)


def make(budget: float = 8, slots: int = 2, **config: object) -> tuple[SchedulerCore, FakeEffects]:
    effects = FakeEffects(budget=int(budget * GiB))
    params = LlamaCppParams(threads=1, slots=slots, context_length=2048, batch_size=512)
    catalog = Catalog([descriptor], defaults={"llamacpp": params})
    base = {
        "keep_alive": 300.0,
        "max_models": 0,
        "max_queue": 8,
        "queue_timeout": 60.0,
    }
    base.update(config)
    core = SchedulerCore(CoreConfig(**base), effects, estimate_by_size, catalog.params)  # type: ignore[arg-type]
    return core, effects


def submit(core: SchedulerCore, rec: ModelRecord, **kw: object) -> Ticket:
    ticket = Ticket(rec.name, **kw)  # type: ignore[arg-type]
    core.handle(Submit(ticket, rec))
    return ticket


def load(core: SchedulerCore, rec: ModelRecord) -> FakeWorker:
    worker = FakeWorker(rec.name, core.models[rec.name].params)
    core.handle(Loaded(rec.name, worker))
    return worker


def finish(core: SchedulerCore, effects: FakeEffects, ticket: Ticket) -> None:
    core.handle(Release(effects.granted[ticket.id]))


def serve_once(core: SchedulerCore, fx: FakeEffects, *records: ModelRecord) -> None:
    """Load each model, serve it one request, and let 10 s pass: idle, in this order."""
    for rec in records:
        t = submit(core, rec)
        load(core, rec)
        finish(core, fx, t)
        fx.clock += 10


def state(core: SchedulerCore, rec: ModelRecord) -> WorkerState:
    return core.models[rec.name].state


# --- loading and granting -------------------------------------------------------------


def test_concurrent_cold_requests_cause_one_load_then_fill_the_slots() -> None:
    core, fx = make(slots=2)
    a = record("a")
    tickets = [submit(core, a) for _ in range(3)]
    assert fx.starts() == ["a:latest"] and not fx.granted
    load(core, a)
    assert set(fx.granted) == {tickets[0].id, tickets[1].id}
    finish(core, fx, tickets[0])
    assert tickets[2].id in fx.granted
    assert fx.starts() == ["a:latest"]


def test_loaded_model_is_not_blocked_by_another_models_long_queue() -> None:
    core, fx = make(slots=1)
    a, b = record("a"), record("b")
    for _ in range(5):
        submit(core, a)
    load(core, a)
    tb = submit(core, b)
    load(core, b)
    assert tb.id in fx.granted


# --- memory and eviction ----------------------------------------------------------------


def test_lru_idle_model_is_evicted_for_a_new_one() -> None:
    core, fx = make(budget=2.5)
    a, b, c = record("a"), record("b"), record("c")
    serve_once(core, fx, a, b)
    submit(core, c)
    assert fx.stopped == ["a:latest"] and "c:latest" not in fx.starts()
    core.handle(Stopped("a:latest", core.models["a:latest"].worker))
    assert fx.starts()[-1] == "c:latest"


def test_busy_model_finishes_before_it_is_evicted() -> None:
    core, fx = make(budget=1.5)
    a, b = record("a"), record("b")
    ta = submit(core, a)
    load(core, a)
    tb = submit(core, b)
    assert state(core, a) == WorkerState.DRAINING and not fx.stopped
    finish(core, fx, ta)
    assert fx.stopped == ["a:latest"]
    core.handle(Stopped("a:latest", core.models["a:latest"].worker))
    load(core, b)
    assert tb.id in fx.granted


def test_draining_model_takes_no_new_requests_in_strict_order() -> None:
    core, fx = make(budget=1.5, slots=4, group_by_model=False)
    a, b = record("a"), record("b")
    ta = submit(core, a)
    load(core, a)
    submit(core, b)
    late = submit(core, a)
    assert late.id not in fx.granted
    finish(core, fx, ta)
    assert fx.stopped == ["a:latest"]


def test_model_that_cannot_fit_alone_is_refused_with_numbers() -> None:
    core, fx = make(budget=8)
    big = record("big", gib=9.2)
    t = submit(core, big)
    error = fx.failed[t.id]
    assert isinstance(error, InsufficientMemory) and error.status == 507
    assert "needs 9.2 GiB, budget 8.0 GiB" in error.message
    assert not fx.starts()


def test_pinned_model_is_never_evicted() -> None:
    core, fx = make(budget=2.5, pinned=frozenset({"p:latest"}))
    p, a, b = record("p"), record("a"), record("b")
    serve_once(core, fx, p, a)
    submit(core, b)
    assert fx.stopped == ["a:latest"]


def test_max_loaded_models() -> None:
    core, fx = make(budget=100, max_models=1)
    a, b = record("a"), record("b")
    t = submit(core, a)
    load(core, a)
    finish(core, fx, t)
    submit(core, b)
    assert fx.stopped == ["a:latest"]


# --- keep-alive ---------------------------------------------------------------------------


def test_keep_alive_expiry_unloads_idle_model() -> None:
    core, fx = make(keep_alive=300.0)
    a = record("a")
    t = submit(core, a)
    load(core, a)
    finish(core, fx, t)
    assert core.next_deadline() == fx.clock + 300
    fx.clock += 299
    core.handle(Tick())
    assert not fx.stopped
    fx.clock += 2
    core.handle(Tick())
    assert fx.stopped == ["a:latest"]


def test_keep_alive_zero_unloads_as_soon_as_idle_and_request_overrides() -> None:
    core, fx = make(keep_alive=300.0)
    a = record("a")
    t = submit(core, a, keep_alive=0.0)
    load(core, a)
    assert not fx.stopped
    finish(core, fx, t)
    assert fx.stopped == ["a:latest"]


def test_keep_alive_forever() -> None:
    core, fx = make(keep_alive=math.inf)
    a = record("a")
    t = submit(core, a)
    load(core, a)
    finish(core, fx, t)
    fx.clock += 10**9
    core.handle(Tick())
    assert not fx.stopped and core.next_deadline() is None


def test_preloaded_model_loads_without_requests_and_stays() -> None:
    core, fx = make(budget=2.5, keep_alive=1.0, preload=frozenset({"p:latest"}))
    p, a, b = record("p"), record("a"), record("b")
    core.handle(Preload(p, waiter="w"))
    assert fx.starts() == ["p:latest"]
    load(core, p)
    assert fx.notified == [("w", None)]
    fx.clock += 100
    core.handle(Tick())
    assert not fx.stopped  # past keep-alive, but preloaded
    serve_once(core, fx, a)
    submit(core, b)  # room for b must come from a, never from the preloaded p
    assert fx.stopped == ["a:latest"]


# --- queues ---------------------------------------------------------------------------------


def test_full_queue_is_refused_with_retry_after() -> None:
    core, fx = make(max_queue=2)
    a = record("a")
    submit(core, a)
    submit(core, a)
    t = submit(core, a)
    assert isinstance(fx.failed[t.id], QueueFull)
    assert fx.failed[t.id].status == 429 and fx.failed[t.id].headers["Retry-After"] == "1"


def test_queue_timeout() -> None:
    core, fx = make(queue_timeout=30.0)
    a = record("a")
    t = submit(core, a)
    assert core.next_deadline() == fx.clock + 30
    fx.clock += 31
    core.handle(Tick())
    assert isinstance(fx.failed[t.id], QueueTimeout) and fx.failed[t.id].status == 503


def test_cancelled_request_leaves_the_queue() -> None:
    core, fx = make(slots=1)
    a = record("a")
    first, gone, last = submit(core, a), submit(core, a), submit(core, a)
    core.handle(Cancel(gone))
    load(core, a)
    finish(core, fx, first)
    assert last.id in fx.granted and gone.id not in fx.granted
    assert gone.id not in fx.failed


def test_interactive_requests_overtake_batch_requests() -> None:
    core, fx = make(slots=1)
    a = record("a")
    batch = [submit(core, a, priority=Priority.BATCH, key="job") for _ in range(3)]
    chat = submit(core, a, priority=Priority.INTERACTIVE, key="user")
    load(core, a)
    assert chat.id in fx.granted and batch[0].id not in fx.granted


# --- failures -------------------------------------------------------------------------------


def test_load_failure_fails_the_waiting_requests_with_the_reason() -> None:
    core, fx = make()
    a = record("a")
    t1, t2 = submit(core, a), submit(core, a)
    core.handle(LoadFailed("a:latest", EngineLoadError("bad magic")))
    assert fx.failed[t1.id].message == fx.failed[t2.id].message == "bad magic"
    assert state(core, a) == WorkerState.FAILED


def test_crashed_worker_restarts_on_next_request_then_backs_off() -> None:
    core, fx = make()
    a = record("a")
    submit(core, a)
    worker = load(core, a)
    core.handle(Exited("a:latest", worker, WorkerCrashed("killed")))
    submit(core, a)
    assert fx.starts() == ["a:latest", "a:latest"]  # first crash: restart at once
    worker = load(core, a)
    core.handle(Exited("a:latest", worker, WorkerCrashed("killed again")))
    refused = submit(core, a)
    assert len(fx.starts()) == 2  # second crash in a row: back off
    # An interactive request is told at once why, and when to retry (issue 15).
    error = fx.failed[refused.id]
    assert isinstance(error, ModelBackingOff) and error.status == 503
    assert error.headers["Retry-After"] == "1" and "killed again" in error.message
    waiting = submit(core, a, patient=True)  # a batch request waits for the restart
    assert waiting.id not in fx.failed
    fx.clock += 1.5
    core.handle(Tick())
    assert len(fx.starts()) == 3


def test_requests_in_line_when_a_worker_crash_loops_hear_why() -> None:
    core, fx = make(slots=1)
    a = record("a")
    first = submit(core, a)
    worker = load(core, a)
    core.handle(Exited("a:latest", worker, WorkerCrashed("segfault")))  # under a request
    submit(core, a)
    worker = load(core, a)
    queued = [submit(core, a), submit(core, a, patient=True)]
    core.handle(Exited("a:latest", worker, WorkerCrashed("segfault")))
    assert first.id not in fx.failed  # its worker's end is the worker client's to report
    assert isinstance(fx.failed[queued[0].id], ModelBackingOff)
    assert queued[1].id not in fx.failed  # patient: served after the backoff


def test_a_worker_killed_while_idle_is_no_crash_loop() -> None:
    """kill -9 (an operator, the OOM killer) of an idle worker, again and again: each
    next request starts it at once (it took 28-30 s before, issue 15)."""
    core, fx = make()
    a = record("a")
    for n in range(1, 6):
        t = submit(core, a)
        worker = load(core, a)
        finish(core, fx, t)
        fx.clock += 10  # idle, well after it was ready
        core.handle(Exited("a:latest", worker, WorkerCrashed("killed")))
        assert core.models["a:latest"].backoff_until <= fx.clock
        assert "while idle" in (core.models["a:latest"].last_error or "")
        assert len(fx.starts()) == n
    submit(core, a)
    assert len(fx.starts()) == 6


def test_a_worker_dying_idle_just_after_loading_still_counts() -> None:
    core, fx = make()
    a = record("a")
    for _ in range(3):
        fx.clock += 10  # past any backoff
        t = submit(core, a)
        worker = load(core, a)
        finish(core, fx, t)
        fx.clock += 1  # within the settling time: its model may be what kills it
        core.handle(Exited("a:latest", worker, WorkerCrashed("died")))
    assert core.models["a:latest"].crashes == 3
    assert core.models["a:latest"].backoff_until > fx.clock


def test_release_from_a_dead_worker_does_not_corrupt_counts() -> None:
    core, fx = make(slots=1)
    a = record("a")
    t = submit(core, a)
    worker = load(core, a)
    core.handle(Exited("a:latest", worker, WorkerCrashed("x")))
    submit(core, a)
    load(core, a)
    finish(core, fx, t)  # the old lease comes back late
    assert core.models["a:latest"].in_flight == 1


# --- grouping -------------------------------------------------------------------------------


def swaps_for_alternating_requests(group: bool) -> int:
    core, fx = make(budget=1.5, slots=1, group_by_model=group)
    a, b = record("a"), record("b")
    tickets = [submit(core, rec) for rec in (a, b, a, b, a, b)]
    for _ in range(50):
        name = next((n for n, st in core.models.items() if st.state == WorkerState.STARTING), None)
        if name is not None:
            load(core, a if name == "a:latest" else b)
        stopping = [st for st in core.models.values() if st.state == WorkerState.STOPPING]
        for st in stopping:
            core.handle(Stopped(st.name, st.worker))
        done = [t for t in tickets if t.id in fx.granted]
        for t in done:
            lease = fx.granted[t.id]
            if lease.worker is core.models[t.model].worker and core.models[t.model].in_flight:
                finish(core, fx, t)
                tickets.remove(t)
                break
        if not tickets:
            break
    assert not tickets, "every request must be served"
    return len(fx.starts())


def test_grouping_serves_queued_requests_per_model_instead_of_thrashing() -> None:
    assert swaps_for_alternating_requests(group=False) == 6
    assert swaps_for_alternating_requests(group=True) == 2


# --- reload, unload, shutdown ----------------------------------------------------------------


def test_reload_keeps_queued_requests_and_uses_new_parameters() -> None:
    core, fx = make(slots=1)
    a = record("a")
    t1, t2 = submit(core, a), submit(core, a)
    load(core, a)
    new = LlamaCppParams(threads=1, slots=3, context_length=1024, batch_size=256)
    core.handle(Reload(a, new, waiter="r"))
    assert state(core, a) == WorkerState.READY and not fx.stopped
    finish(core, fx, t1)
    assert fx.stopped == ["a:latest"] and t2.id not in fx.granted and t2.id not in fx.failed
    core.handle(Stopped("a:latest", core.models["a:latest"].worker))
    assert fx.started[-1] == ("a:latest", new)
    load(core, a)
    assert t2.id in fx.granted and ("r", None) in fx.notified


def test_unload_waits_for_in_flight_work() -> None:
    core, fx = make()
    a = record("a")
    t = submit(core, a)
    load(core, a)
    core.handle(Unload("a:latest", waiter="u"))
    assert not fx.stopped
    finish(core, fx, t)
    assert fx.stopped == ["a:latest"]
    core.handle(Stopped("a:latest", core.models["a:latest"].worker))
    assert ("u", None) in fx.notified


def test_shutdown_fails_queued_requests_and_stops_workers() -> None:
    core, fx = make(slots=1)
    a = record("a")
    submit(core, a)
    queued = submit(core, a)
    load(core, a)
    core.handle(Shutdown())
    assert isinstance(fx.failed[queued.id], ShuttingDown)
    assert fx.stopped == ["a:latest"]
    late = submit(core, a)
    assert isinstance(fx.failed[late.id], ShuttingDown)


@pytest.mark.parametrize("group", [True, False])
def test_every_request_is_answered(group: bool) -> None:
    assert swaps_for_alternating_requests(group) >= 2


def test_a_model_being_stopped_for_room_is_not_followed_by_a_second_eviction() -> None:
    core, fx = make(budget=2.5)
    a, b, c = record("a"), record("b"), record("c")
    serve_once(core, fx, a, b)
    submit(core, c)
    core.handle(Tick())
    submit(core, c)
    assert fx.stopped == ["a:latest"] and "c:latest" not in fx.starts()
    core.handle(Stopped("a:latest", core.models["a:latest"].worker))
    assert fx.starts()[-1] == "c:latest" and fx.stopped == ["a:latest"]


def test_next_deadline_is_never_in_the_past() -> None:
    """A past deadline the pass cannot act on would make the run loop spin."""
    core, fx = make(keep_alive=5.0, slots=1)
    a, b = record("a"), record("b")
    t = submit(core, a)
    load(core, a)
    submit(core, b)  # waiting, never backed off: its backoff time (0) is long past
    fx.clock += 100  # a's keep-alive has passed, but a is busy
    core.handle(Tick())
    deadline = core.next_deadline()
    assert deadline is None or deadline > fx.clock
    finish(core, fx, t)


def test_a_models_declared_parameters_override_the_servers() -> None:
    """corral.yaml's per-model context, threads, slots, keep_alive, pinned reach the worker."""
    from dataclasses import replace

    core, fx = make(slots=2)
    declared = replace(
        record("tuned"),
        params={"slots": 6, "threads": 3, "context": 1024, "keep_alive": "1h", "pinned": True},
    )
    plain = record("plain")
    submit(core, declared)
    submit(core, plain)
    assert fx.started == [
        ("tuned:latest", LlamaCppParams(threads=3, slots=6, context_length=1024, batch_size=512)),
        ("plain:latest", PARAMS),
    ]
    state = core.models["tuned:latest"]
    assert state.keep_alive == 3600.0 and state.pinned
    assert (
        core.models["plain:latest"].keep_alive == 300.0 and not core.models["plain:latest"].pinned
    )


# --- GPU memory -----------------------------------------------------------------------


def make_gpu(
    vram_gib: dict[str, float],
    gpus: dict[int, float],
    sleepers: frozenset[str] = frozenset(),
    ram: float = 64,
) -> tuple[SchedulerCore, FakeEffects]:
    """A core whose models need ``vram_gib`` of GPU memory, on GPUs with these budgets."""
    effects = FakeEffects(budget=int(ram * GiB))
    effects.gpus = {i: (int(b * GiB), 24 * GiB) for i, b in gpus.items()}
    catalog = Catalog([descriptor], defaults={"llamacpp": PARAMS})

    def estimate(rec: ModelRecord, params: object) -> MemoryEstimate:
        vram = int(vram_gib.get(rec.name.split(":")[0], 0) * GiB)
        return MemoryEstimate(weights=rec.size, kv_cache=0, buffers=0, process=0, vram=vram)

    config = CoreConfig(keep_alive=300.0, max_models=0, max_queue=8, queue_timeout=60.0)

    def sleeps(rec: ModelRecord, params: object) -> bool:
        return rec.name.split(":")[0] in sleepers

    return SchedulerCore(config, effects, estimate, catalog.params, sleeps), effects


def test_models_are_placed_on_gpus_and_evicted_when_one_is_full() -> None:
    core, fx = make_gpu({"a": 12, "b": 12, "c": 12}, {0: 20, 1: 20})
    a, b, c = record("a"), record("b"), record("c")
    serve_once(core, fx, a, b)
    assert fx.placed == {"a:latest": (0,), "b:latest": (1,)}
    status = core.models["a:latest"]
    assert status.gpus == (0,) and status.vram_per_device == 12 * GiB
    tc = submit(core, c)  # room on neither: the least recently used goes, c takes its GPU
    assert fx.stopped == ["a:latest"]
    core.handle(Tick())  # while a stops, c waits for its GPU memory: it is not refused
    assert tc.id not in fx.failed and fx.starts() == ["a:latest", "b:latest"]
    assert fx.stopped == ["a:latest"]  # nor is b evicted: a's memory is on its way
    core.handle(Stopped("a:latest", core.models["a:latest"].worker))
    assert fx.placed["c:latest"] == (0,)
    assert core.models["a:latest"].gpus == ()


def test_a_model_without_vram_needs_no_gpu_and_one_that_cannot_fit_is_refused() -> None:
    core, fx = make_gpu({"big": 30}, {0: 20})
    plain = submit(core, record("plain"))
    assert fx.placed["plain:latest"] == () and plain.id not in fx.failed
    big = submit(core, record("big"))
    assert isinstance(fx.failed[big.id], InsufficientMemory)
    assert "30.0 GiB of GPU memory (GPU 0 has 20.0 GiB)" in fx.failed[big.id].message


def test_without_gpus_a_model_that_needs_vram_is_refused_saying_so() -> None:
    core, fx = make_gpu({"gpu-only": 8}, {})
    ticket = submit(core, record("gpu-only"))
    assert "no GPU was found" in fx.failed[ticket.id].message


def test_a_model_that_can_sleep_sleeps_for_gpu_memory_and_wakes_without_a_reload() -> None:
    core, fx = make_gpu({"a": 12, "b": 12}, {0: 20}, sleepers=frozenset({"a", "b"}))
    a, b = record("a"), record("b")
    serve_once(core, fx, a)
    worker_a = core.models["a:latest"].worker
    tb = submit(core, b)  # no room on the GPU: a sleeps, it is not stopped
    assert fx.slept == ["a:latest"] and fx.stopped == []
    assert core.models["a:latest"].state == WorkerState.FALLING_ASLEEP
    core.handle(Tick())  # while a falls asleep, b waits: it is not refused
    assert fx.starts() == ["a:latest"] and tb.id not in fx.failed
    core.handle(Slept("a:latest", worker_a))
    assert core.models["a:latest"].state == WorkerState.SLEEPING
    assert fx.placed["b:latest"] == (0,)
    load(core, b)
    finish(core, fx, tb)
    fx.clock += 10
    ta = submit(core, a)  # a wakes on its GPU; b, idle now, goes to sleep for it
    assert fx.slept == ["a:latest", "b:latest"] and fx.woken == []
    core.handle(Slept("b:latest", core.models["b:latest"].worker))
    assert fx.woken == ["a:latest"] and core.models["a:latest"].state == WorkerState.WAKING
    core.handle(Woken("a:latest", worker_a))
    assert core.models["a:latest"].worker is worker_a  # the same process: no reload
    assert ta.id in fx.granted and fx.starts() == ["a:latest", "b:latest"]


def test_a_model_evicted_for_ram_is_stopped_even_if_it_could_sleep() -> None:
    """Asleep, its weights would be in RAM: when RAM is what is short, it stops."""
    core, fx = make_gpu({"a": 12, "b": 12}, {0: 20}, sleepers=frozenset({"a"}), ram=1.5)
    serve_once(core, fx, record("a"))
    submit(core, record("b"))
    assert fx.stopped == ["a:latest"] and fx.slept == []


def test_a_sleeping_model_past_its_keep_alive_or_unloaded_is_stopped() -> None:
    core, fx = make_gpu({"a": 12, "b": 12}, {0: 20}, sleepers=frozenset({"a"}))
    serve_once(core, fx, record("a"))
    submit(core, record("b"))
    core.handle(Slept("a:latest", core.models["a:latest"].worker))
    fx.clock += 301
    core.handle(Tick())
    assert "a:latest" in fx.stopped


def test_a_worker_that_cannot_fall_asleep_is_stopped_instead() -> None:
    core, fx = make_gpu({"a": 12, "b": 12}, {0: 20}, sleepers=frozenset({"a"}))
    serve_once(core, fx, record("a"))
    submit(core, record("b"))
    error = EngineLoadError("/sleep answered 404")
    core.handle(SleepFailed("a:latest", core.models["a:latest"].worker, error))
    assert fx.stopped == ["a:latest"]
