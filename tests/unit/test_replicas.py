"""Replicas of one model (``replicas: N``): routing, loading on demand, unload and reload.

The scheduler core driven message by message with the recording fake (no processes);
the routing seen from the outside, on real workers, is in
``tests/integration/test_replicas_serve.py``.
"""

from __future__ import annotations

from dataclasses import replace

from corral.errors import WorkerCrashed
from corral.scheduler.core import (
    AFFINITY,
    Exited,
    Loaded,
    Preload,
    Release,
    Reload,
    SchedulerCore,
    Stopped,
    Submit,
    Unload,
)
from corral.scheduler.queue import Ticket
from corral.service.affinity import affinity_of
from tests.support.fake_effects import FakeWorker, record
from tests.unit.test_scheduler_core import make

REC = replace(record("r"), params={"replicas": 3})


def submit(core: SchedulerCore, affinity: int | None = None) -> Ticket:
    ticket = Ticket(REC.name, affinity=affinity)
    core.handle(Submit(ticket, REC))
    return ticket


def ready(core: SchedulerCore, key: str) -> FakeWorker:
    worker = FakeWorker(key, core.models[key].params)
    core.handle(Loaded(key, worker))
    return worker


def test_one_replica_starts_first_and_more_only_when_it_is_full() -> None:
    core, fx = make(slots=2)
    first = submit(core)
    assert [k for k, _ in fx.started] == ["r:latest"]  # no reason to start three
    ready(core, "r:latest")
    assert fx.granted[first.id].model == "r:latest"
    submit(core)  # a free slot on the warm replica beats a cold one
    assert [k for k, _ in fx.started] == ["r:latest"]
    assert core.models["r:latest"].in_flight == 2
    # Full: the next waits. One waiting is not worth a load yet; two are.
    submit(core)
    submit(core)
    assert [k for k, _ in fx.started] == ["r:latest", "r:latest#1"]
    ready(core, "r:latest#1")
    assert core.models["r:latest#1"].in_flight >= 1


def test_a_conversation_stays_on_its_replica_until_it_is_much_busier() -> None:
    core, fx = make(slots=4)
    core.handle(Preload(REC))
    for key in ("r:latest", "r:latest#1", "r:latest#2"):
        ready(core, key)
    conversation = 7  # prefers replica 7 % 3 = 1
    tickets = [submit(core, conversation) for _ in range(3)]
    assert {fx.granted[t.id].model for t in tickets} == {"r:latest#1"}
    # Replica 1 now holds 3 of 4 slots, the others none: 0.75 - AFFINITY > 0, so the
    # conversation's next request goes to an idle replica rather than wait behind.
    assert 3 / 4 - AFFINITY > 0
    spill = submit(core, conversation)
    assert fx.granted[spill.id].model in ("r:latest", "r:latest#2")
    # Requests without a prefix (embeddings) go to the least loaded.
    plain = submit(core)
    assert fx.granted[plain.id].model in ("r:latest", "r:latest#2")


def test_release_and_crash_touch_only_their_replica() -> None:
    core, fx = make(slots=1)
    core.handle(Preload(REC))
    workers = {k: ready(core, k) for k in ("r:latest", "r:latest#1", "r:latest#2")}
    t0, t1 = submit(core), submit(core)
    lease0, lease1 = fx.granted[t0.id], fx.granted[t1.id]
    assert lease0.model != lease1.model
    core.handle(Release(lease0))
    assert core.models[lease0.model].in_flight == 0
    assert core.models[lease1.model].in_flight == 1
    crash = WorkerCrashed("gone")
    core.handle(Exited(lease1.model, workers[lease1.model], crash))
    assert core.models[lease1.model].worker is None
    others = [k for k in workers if k != lease1.model]
    assert all(core.models[k].worker is workers[k] for k in others)


def test_preload_unload_and_reload_answer_once_all_replicas_have() -> None:
    core, fx = make()
    waiter = _Waiter()
    core.handle(Preload(REC, waiter))
    assert sorted(k for k, _ in fx.started) == ["r:latest", "r:latest#1", "r:latest#2"]
    ready(core, "r:latest")
    ready(core, "r:latest#1")
    assert not fx.notified  # one replica still loading
    ready(core, "r:latest#2")
    assert fx.notified == [(waiter, None)]
    gone = _Waiter()
    core.handle(Unload(REC.name, gone))
    assert sorted(fx.stopped) == ["r:latest", "r:latest#1", "r:latest#2"]
    for key in ("r:latest", "r:latest#1"):
        core.handle(Stopped(key, core.models[key].worker))
    assert (gone, None) not in fx.notified
    core.handle(Stopped("r:latest#2", core.models["r:latest#2"].worker))
    assert (gone, None) in fx.notified
    again = _Waiter()
    core.handle(Reload(REC, None, again))
    assert len(fx.started) == 6
    for key in ("r:latest", "r:latest#1", "r:latest#2"):
        ready(core, key)
    assert (again, None) in fx.notified


def test_one_replica_is_the_model_as_before() -> None:
    core, fx = make()
    plain = record("p")
    ticket = Ticket(plain.name, affinity=123)
    core.handle(Submit(ticket, plain))
    assert [k for k, _ in fx.started] == ["p:latest"]
    assert list(core.models) == ["p:latest"]


def test_affinity_is_the_conversations_opening() -> None:
    system = {"role": "system", "content": "be brief"}
    turn1 = [system, {"role": "user", "content": "hello"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]
    other = [system, {"role": "user", "content": "something else"}]

    def of(messages: list[dict[str, str]]) -> int | None:
        import json

        return affinity_of(json.dumps({"model": "m", "messages": messages}).encode())

    assert of(turn1) == of(turn2) is not None
    assert of(turn1) != of(other)
    assert affinity_of(b'{"model": "m", "prompt": "abc"}') == affinity_of(b'{"prompt": "abc"}')
    assert affinity_of(b'{"input": "embed me"}') is None
    assert affinity_of(b"not json") is None


class _Waiter:
    """A waiter the fake records; answered once."""

    def __init__(self) -> None:
        self._done = False

    def done(self) -> bool:
        return self._done


def test_a_cold_replica_is_no_pull_for_a_conversation() -> None:
    """A conversation whose replica is not loaded goes to a warm one with room: there
    is no cache to find on a cold one, and loading it would cost more."""
    core, fx = make(slots=4)
    submit(core)
    ready(core, "r:latest")
    prefers_two = 2  # replica 2 % 3, not loaded
    tickets = [submit(core, prefers_two) for _ in range(3)]
    assert {fx.granted[t.id].model for t in tickets} == {"r:latest"}
    assert [k for k, _ in fx.started] == ["r:latest"]
