"""Whatever goes wrong inside the scheduler, a waiting request hears of it in time.

Issue 15: a bad stored parameter made the core raise on every Submit, and the
requests then waited with no answer past the queue timeout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from corral.engines.catalog import load_catalog
from corral.errors import EngineError, QueueTimeout
from corral.registry.records import ModelRecord
from corral.scheduler import core, runtime
from corral.scheduler.runtime import Scheduler
from corral.settings import Settings
from tests.support.fake_engine import ENGINES_ENV, install_fake_models

pytestmark = pytest.mark.anyio


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Scheduler, ModelRecord]]:
    registry = install_fake_models(tmp_path, {"m": {"tokens": 3}})
    settings = Settings(home=tmp_path, worker_stop_grace=1.0, queue_timeout=0.3)
    catalog = load_catalog([ENGINES_ENV], environ={})
    async with aiohttp.ClientSession() as session:
        scheduler = Scheduler(settings, catalog, session)
        scheduler.start()
        yield scheduler, registry.get("m")
        await scheduler.close(5.0)
    registry.close()


async def test_an_exception_in_the_core_fails_the_request_at_once(
    setup: tuple[Scheduler, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, record = setup
    handle = scheduler._core.handle

    def broken(message: core.Message) -> None:
        if isinstance(message, core.Submit):
            raise TypeError("'>' not supported between instances of 'str' and 'int'")
        handle(message)

    monkeypatch.setattr(scheduler._core, "handle", broken)
    started = time.monotonic()
    with pytest.raises(EngineError, match="scheduler failed"):
        await scheduler.acquire(record)
    assert time.monotonic() - started < 0.3  # not at the queue deadline: at once


async def test_a_request_the_core_never_answers_times_out(
    setup: tuple[Scheduler, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, record = setup
    handle = scheduler._core.handle
    monkeypatch.setattr(runtime, "OUTER_GRACE", 0.2)

    def forgetful(message: core.Message) -> None:  # a bug that drops the ticket
        if not isinstance(message, core.Submit):
            handle(message)

    monkeypatch.setattr(scheduler._core, "handle", forgetful)
    started = time.monotonic()
    with pytest.raises(QueueTimeout):
        await scheduler.acquire(record)
    assert 0.4 < time.monotonic() - started < 3.0
    monkeypatch.setattr(scheduler._core, "handle", handle)
    # The scheduler still serves (patient: loading may outlast the short queue timeout).
    grant = await scheduler.acquire(record, patient=True)
    grant.release()
