"""One path from every API to the workers: resolve, check, wait for a slot, send.

OpenAI's routes, Ollama's routes and the batch runner all call ``InferenceService``;
none of them talks to the registry, the engine catalog, the scheduler or a worker on
its own. So the sequence is written once:

1. ``resolve``: the model by name or alias (404), whether its engine serves the
   capability asked for (400), and the engine's pre-check of the body (400), all
   before any model is loaded for the request;
2. ``send``: wait in the model's line for a slot (priority, key and deadline from the
   ``Caller``), post the body to the granted worker, and hand back the reply, which
   releases the slot when it is closed or read to the end.

A request that finds its worker gone before the worker took it is sent once more,
to a new worker (the scheduler starts one); a request a worker had taken is never
sent twice. Keys, limits, metrics and the request log hook in here, once for all APIs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.engines.catalog import Catalog
from corral.errors import ModelNotFound, WorkerGone
from corral.keys.limits import Admission, Limiter
from corral.keys.store import Principal
from corral.registry.records import Capability, ModelRecord
from corral.registry.store import Registry
from corral.scheduler.core import replicas_of
from corral.scheduler.queue import Priority
from corral.scheduler.runtime import Grant, Scheduler
from corral.service.affinity import affinity_of
from corral.service.worker_client import TokenUsage, WorkerClient, WorkerReply

log = logging.getLogger("corral.service")
SEND_ATTEMPTS = 2  # the first, and one more on a new worker if the first found it gone


@dataclass
class Trace:
    """What one HTTP request's inference came to, filled in when its reply ends: the
    request log and the HTTP metrics read it (``Caller.trace``)."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queued_ns: int | None = None
    ttft_ns: int | None = None  # streams: until the first bytes of the answer
    user: str | None = None  # the client's ``user`` field, if it sent one
    metadata: dict[str, Any] | None = None  # and its ``metadata``
    # OpenAI's x-ratelimit-* headers for the answer, when the key has limits.
    rate_headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Caller:
    """Who is asking, as the scheduler's line sees it."""

    priority: Priority = Priority.INTERACTIVE
    key: str = "anonymous"  # API keys take turns in a model's line
    patient: bool = False  # waits for room in the line, no queue timeout (batches)
    # The API key the request came with (None: no keys exist): its models and limits.
    principal: Principal | None = None
    trace: Trace | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RequestDone:
    """One request's accounting, reported when its reply ends (read, closed or cut)."""

    model: str
    path: str
    caller: Caller
    status: int  # the worker's
    complete: bool  # False: cut short (client gone, worker died)
    queued_ns: int  # waiting for a slot, loading the model included
    total_ns: int  # from the first wait until the reply ended
    attempts: int  # 2 when the first worker was found gone
    usage: TokenUsage | None  # when the answer said (streams: with include_usage)
    ttft_ns: int | None = None  # streams: from the first wait to the answer's first bytes

    @property
    def inter_token_seconds(self) -> float | None:
        """Streams: the mean time between completion tokens after the first (None when
        there is no first-token time, or fewer than two tokens)."""
        completion = self.usage.completion_tokens if self.usage else 0
        if self.ttft_ns is None or completion < 2:
            return None
        return (self.total_ns - self.ttft_ns) / 1e9 / (completion - 1)


Observer = Callable[[RequestDone], None]


@dataclass
class Exchange:
    """A request handed to a worker: its reply, and when the slot was granted."""

    reply: WorkerReply
    record: ModelRecord
    granted_ns: int  # perf_counter_ns when the slot was granted (Ollama's load_duration)


class InferenceService:
    def __init__(
        self,
        registry: Registry,
        catalog: Catalog,
        scheduler: Scheduler,
        client: WorkerClient,
        observers: Sequence[Observer] = (),
        limiter: Limiter | None = None,
    ) -> None:
        self.registry = registry
        self.catalog = catalog
        self.scheduler = scheduler
        self.client = client
        self.observers = list(observers)  # metrics and the request log hook in here
        self.limiter = limiter or Limiter()

    def resolve(
        self, name: str, capability: Capability, body: Mapping[str, Any] | None = None
    ) -> ModelRecord:
        """The model called ``name``, if its engine serves ``capability`` and would
        take ``body``; a 404 or 400 otherwise, before anything is loaded."""
        record = self.registry.get(name)
        self.catalog.check_serves(record, capability)
        if body is not None:
            self.precheck(record, capability, body)
        return record

    def precheck(
        self, record: ModelRecord, capability: Capability, body: Mapping[str, Any]
    ) -> None:
        """The engine's refusal of ``body`` (a 400), made before anything is loaded."""
        self.catalog.precheck(record, capability, body)

    async def acquire(
        self,
        record: ModelRecord,
        caller: Caller,
        keep_alive: float | None = None,
        affinity: int | None = None,
    ) -> Grant:
        """A slot on a ready worker for ``record`` (loading it if need be)."""
        self.registry.touch(record.name)
        return await self.scheduler.acquire(
            record,
            priority=caller.priority,
            key=caller.key,
            keep_alive=keep_alive,
            patient=caller.patient,
            affinity=affinity,
        )

    async def send(
        self,
        record: ModelRecord,
        path: str,
        body: bytes,
        caller: Caller,
        keep_alive: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Exchange:
        """Wait for a slot and hand ``body`` to the worker; the slot is released when
        the reply is closed or read to the end (at once, if this raises)."""
        started = time.perf_counter_ns()
        principal = caller.principal
        if principal is not None and not principal.may_use(record.name):
            raise ModelNotFound(record.name)  # as if it did not exist: keys see only theirs
        admission = None
        if principal is not None and principal.limited:
            limiter = self.limiter
            admission = (
                await limiter.enter_patiently(principal)
                if caller.patient
                else limiter.enter(principal)
            )
            if caller.trace is not None:
                caller.trace.rate_headers = admission.headers
        try:
            return await self._send(
                record, path, body, caller, keep_alive, headers, admission, started
            )
        except BaseException:
            if admission is not None:
                self.limiter.leave(admission, 0)
            raise

    async def _send(
        self,
        record: ModelRecord,
        path: str,
        body: bytes,
        caller: Caller,
        keep_alive: float | None,
        headers: Mapping[str, str] | None,
        admission: Admission | None,
        started: int,
    ) -> Exchange:
        affinity = affinity_of(body) if replicas_of(record) > 1 else None
        for attempt in range(1, SEND_ATTEMPTS + 1):
            grant = await self.acquire(record, caller, keep_alive, affinity)
            granted = time.perf_counter_ns()

            # The slot goes back, and the request is accounted, when the reply ends.
            account = _Accounting(
                self, record.name, path, caller, grant, started, granted, attempt, admission
            )
            try:
                reply = await self.client.send(
                    grant.worker, path, body, headers, on_close=account.done
                )
            except WorkerGone as exc:
                grant.lost(exc)  # before the slot is free, so no one else is sent there
                if attempt == SEND_ATTEMPTS:
                    raise
                log.warning("%s; sending the request to a new worker", exc.message)
                continue
            except BaseException:
                grant.release()
                raise
            return Exchange(reply, record, granted)
        raise AssertionError("unreachable")  # the loop returns or raises

    def report(self, done: RequestDone) -> None:
        if log.isEnabledFor(logging.DEBUG):
            usage = done.usage
            tokens = f", {usage.prompt_tokens}+{usage.completion_tokens} tokens" if usage else ""
            log.debug(
                "%s %s -> %s%s, queued %.1f ms, total %.1f ms%s",
                done.model,
                done.path,
                done.status,
                "" if done.complete else " (cut short)",
                done.queued_ns / 1e6,
                done.total_ns / 1e6,
                tokens,
            )
        for observer in self.observers:
            try:
                observer(done)
            except Exception:  # an observer's bug must not fail the request it observes
                log.exception("request observer failed")


@dataclass
class _Accounting:
    """What one sent request needs when its reply ends: its slot, and its numbers."""

    service: InferenceService
    model: str
    path: str
    caller: Caller
    grant: Grant
    started_ns: int
    granted_ns: int
    attempts: int
    admission: Admission | None = None

    def done(self, reply: WorkerReply) -> None:
        self.grant.release()
        trace = self.caller.trace
        if not (self.admission or trace or self.service.observers) and not log.isEnabledFor(
            logging.DEBUG
        ):
            return  # nobody counts: spare the hot path the record
        usage = reply.usage
        if self.admission is not None:
            tokens = usage.prompt_tokens + usage.completion_tokens if usage else 0
            self.service.limiter.leave(self.admission, tokens)
        ttft = None if reply.first_chunk_ns is None else reply.first_chunk_ns - self.started_ns
        if trace is not None:
            trace.model = self.model
            trace.queued_ns = self.granted_ns - self.started_ns
            trace.ttft_ns = ttft
            if usage is not None:
                trace.prompt_tokens = usage.prompt_tokens
                trace.completion_tokens = usage.completion_tokens
        total = time.perf_counter_ns() - self.started_ns
        self.service.report(
            RequestDone(
                model=self.model,
                path=self.path,
                caller=self.caller,
                status=reply.status,
                complete=reply.complete,
                queued_ns=self.granted_ns - self.started_ns,
                total_ns=total,
                attempts=self.attempts,
                usage=usage,
                ttft_ns=ttft,
            )
        )
