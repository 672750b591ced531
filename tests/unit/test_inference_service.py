"""The inference service in-process, on the real scheduler and fake-engine workers."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from corral.engines.catalog import load_catalog
from corral.errors import ModelNotFound, UnsupportedCapability, WorkerCrashed
from corral.registry.records import Capability
from corral.scheduler.runtime import Scheduler
from corral.service.inference import Caller, InferenceService, RequestDone
from corral.service.worker_client import WorkerClient
from corral.settings import Settings
from tests.support.fake_engine import ENGINES_ENV, install_fake_models
from tests.support.server import pid_alive

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"


def chat(content: str = "hi", **extra: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body).encode()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[InferenceService]:
    registry = install_fake_models(
        tmp_path,
        {"m": {"tokens": 3, "crash_on": "boom"}, "e": {"embedding": True}},
    )
    settings = Settings(home=tmp_path, worker_stop_grace=1.0)
    catalog = load_catalog([ENGINES_ENV], environ={})
    async with aiohttp.ClientSession() as session:
        scheduler = Scheduler(settings, catalog, session)
        scheduler.start()
        yield InferenceService(registry, catalog, scheduler, WorkerClient(session))
        await scheduler.close(5.0)
    registry.close()


async def test_send_answers_and_accounts_once(service: InferenceService) -> None:
    seen: list[RequestDone] = []
    service.observers.append(seen.append)
    record = service.resolve("m", Capability.CHAT)
    exchange = await service.send(record, CHAT, chat(), Caller(key="k"))
    body = await exchange.reply.json()
    assert body["choices"][0]["message"]["content"] == "t0 t1 t2 "
    [done] = seen
    assert (done.model, done.status, done.complete, done.attempts) == ("m:latest", 200, True, 1)
    assert done.usage is not None and done.usage.completion_tokens == 3
    assert 0 < done.queued_ns <= done.total_ns and done.caller.key == "k"


async def test_stream_usage_is_counted_when_the_answer_carries_it(
    service: InferenceService,
) -> None:
    seen: list[RequestDone] = []
    service.observers.append(seen.append)
    record = service.resolve("m", Capability.CHAT)
    body = chat(stream=True, stream_options={"include_usage": True})
    exchange = await service.send(record, CHAT, body, Caller())
    events = [event async for event in exchange.reply.events()]
    assert events[-1]["usage"]["completion_tokens"] == 3
    assert seen[0].usage is not None and seen[0].usage.completion_tokens == 3


async def test_worker_gone_before_it_took_the_request_is_sent_again(
    service: InferenceService,
) -> None:
    seen: list[RequestDone] = []
    service.observers.append(seen.append)
    record = service.resolve("m", Capability.CHAT)
    first = await service.send(record, CHAT, chat(), Caller())
    await first.reply.json()
    pid = first.reply.worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # Dead before the next request leaves (a kill racing the send may close the pooled
    # connection under it instead, which is a crash seen mid-request, never re-sent),
    # and waited for without yielding to the event loop: the scheduler has not heard
    # of the exit yet, so the request is granted the dead worker and must be re-sent.
    for _ in range(500):
        if not pid_alive(pid):
            break
        time.sleep(0.01)  # noqa: ASYNC251 (not yielding is the point: see above)
    again = await service.send(record, CHAT, chat(), Caller())
    assert (await again.reply.json())["choices"][0]["message"]["content"] == "t0 t1 t2 "
    assert again.reply.worker.pid != pid and seen[-1].attempts == 2


async def test_a_request_the_worker_took_is_never_sent_twice(service: InferenceService) -> None:
    record = service.resolve("m", Capability.CHAT)
    with pytest.raises(WorkerCrashed, match="exit code 70"):
        exchange = await service.send(record, CHAT, chat("boom"), Caller())
        await exchange.reply.json()
    for _ in range(100):  # the scheduler hears of the exit a moment later
        [status] = service.scheduler.snapshot()
        if status.crashes:
            break
        await anyio.sleep(0.02)
    assert status.crashes == 1 and status.engine == "fake"
    exchange = await service.send(record, CHAT, chat(), Caller())
    assert (await exchange.reply.json())["choices"][0]["message"]["content"] == "t0 t1 t2 "
    assert service.scheduler.snapshot()[0].crashes == 1  # one crash: it was not sent again


async def test_resolve_refuses_before_anything_loads(service: InferenceService) -> None:
    with pytest.raises(ModelNotFound):
        service.resolve("absent", Capability.CHAT)
    with pytest.raises(UnsupportedCapability, match="embedding model"):
        service.resolve("e", Capability.CHAT)
    assert service.scheduler.snapshot() == []
