"""Run batches inside the server, at batch priority, durably.

Each active batch gets a task that streams its input file, skipping lines already
answered, and keeps a bounded number of requests waiting in the scheduler at
``Priority.BATCH``: interactive requests go first and batch requests fill the slots
they leave idle, in the same continuous batches. Batches wait in the model's queue
under their own key, so several batches on one model take turns; batches on
different models run side by side.

Results go to a committer that appends them to the batch's journal (fsync) and then
marks their lines done in the database, in groups. A gateway runs a batch only while
it holds the batch's lease (``leases.py``), so several gateways on one database share
the batches and take over a dead one's; each claim is a new generation with a
journal of its own, and starts by adopting what earlier generations' journals and
the workers' spools answered (see ``journal.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from corral.batch.batches import Batches
from corral.batch.files import FileStore
from corral.batch.journal import Journal, Result
from corral.batch.leases import Lease, LeaseLost, Leases, locked_if_held
from corral.batch.lines import BatchLine, parse_line, v2_model
from corral.batch.tables import BatchDoneRow, BatchRow
from corral.errors import CorralError, InternalError, new_request_id
from corral.keys.store import KeyStore
from corral.protocol.handoff import BATCH_HEADER, REQUEST_ID_HEADER
from corral.registry.records import Capability
from corral.scheduler.queue import Priority
from corral.service.inference import Caller, InferenceService
from corral.service.worker_client import json_object_of, worker_error

log = logging.getLogger("corral.batch")
COMMIT_GROUP = 512  # most results per fsync + transaction
CAPABILITY = {
    "/v1/chat/completions": Capability.CHAT,
    "/v1/completions": Capability.COMPLETION,
    "/v1/embeddings": Capability.EMBEDDINGS,
}


def capability_of(endpoint: str) -> Capability:
    """What a batch's endpoint asks of its model: V2 infer URLs ask for tensors."""
    return Capability.TENSOR if v2_model(endpoint) is not None else CAPABILITY[endpoint]


_UNSEEN = object()  # a line no generation has answered


@dataclass
class _Run:
    lease: Lease
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    lost: bool = False  # another gateway holds the batch now


class BatchRunner:
    def __init__(
        self,
        batches: Batches,
        files: FileStore,
        inference: InferenceService,
        directory: Path,
        in_flight: int = 16,
        keys: KeyStore | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.batches = batches
        self.files = files
        self.inference = inference
        self.directory = directory
        self.in_flight = in_flight
        self.keys = keys  # a batch's requests run as (and are limited as) its key
        self.leases = leases or Leases(batches.engine, "local", 15.0)
        self._runs: dict[str, _Run] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- control -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="batch-runner")

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        run = self._runs.get(batch_id)
        if run is not None:
            run.stop.set()
        self.wake()

    async def close(self) -> None:
        tasks = [t for t in (self._task, *(r.task for r in self._runs.values())) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _watch(self) -> None:
        """Run every active batch whose lease this gateway can take: new ones, those a
        restart left, and those of a gateway that stopped renewing its leases."""
        while True:
            self._wake.clear()
            try:
                rows = await asyncio.to_thread(self.batches.active)
            except Exception:
                log.exception("cannot list batches")
                rows = []
            for row in rows:
                if row.id in self._runs or not self.leases.claimable(row):
                    continue
                try:
                    lease = await asyncio.to_thread(self.leases.claim, row.id)
                except Exception:
                    log.exception("cannot claim batch %s", row.id)
                    continue
                if lease is None:
                    continue  # another gateway was quicker
                if row.lease_owner not in (None, self.leases.owner):
                    log.info("batch %s: taken over from %s", row.id, row.lease_owner)
                run = _Run(lease)
                self._runs[row.id] = run
                run.task = asyncio.create_task(self._guarded(row.id, run), name=row.id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 2.0)

    async def _guarded(self, batch_id: str, run: _Run) -> None:
        heartbeat = asyncio.create_task(self._keep(run), name=f"{batch_id}-lease")
        try:
            await self._run(batch_id, run)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            run.lost = True
            log.warning("batch %s: another gateway holds it now; stopped here", batch_id)
        except Exception:
            error = InternalError(new_request_id())
            log.exception("batch %s failed [request %s]", batch_id, error.request_id)
            try:
                ids = await asyncio.to_thread(self._publish_what_is_done, batch_id)
                await asyncio.to_thread(
                    self._update_held,
                    run.lease,
                    status="failed",
                    failed_at=time.time(),
                    errors=[{"code": error.code, "message": error.message, "line": None}],
                    **ids,
                )
            except LeaseLost:
                run.lost = True
        finally:
            heartbeat.cancel()
            self._runs.pop(batch_id, None)
            if not run.lost:
                with contextlib.suppress(Exception):  # else it expires
                    await asyncio.to_thread(self.leases.release, run.lease)

    async def _keep(self, run: _Run) -> None:
        """Renew the lease while the batch runs; notice a cancel made on another
        gateway, and a lease lost (the next commit stops the run)."""
        while True:
            await asyncio.sleep(self.leases.seconds / 3)
            try:
                status = await asyncio.to_thread(self.leases.renew, run.lease)
            except Exception:
                log.exception("batch %s: cannot renew its lease", run.lease.batch_id)
                continue
            if status is None:
                run.lost = True
                run.stop.set()
                return
            if status == "cancelling":
                run.stop.set()

    def _update_held(self, lease: Lease, **values: Any) -> None:
        """Change the batch's row, if ``lease`` still holds it (else ``LeaseLost``)."""
        with Session(self.batches.engine) as session, session.begin():
            row = locked_if_held(session, lease)
            for name, value in values.items():
                setattr(row, name, value)

    def _journal(self, batch_id: str, generation: int | None) -> Journal:
        base = self.directory / batch_id
        return Journal(base if generation is None else base / f"g{generation}")

    def _generations(self, batch_id: str) -> list[int | None]:
        """Every generation with a journal on disk (None: the journal from before leases)."""
        base = self.directory / batch_id
        found: list[int | None] = []
        if (base / "output.jsonl").exists() or (base / "errors.jsonl").exists():
            found.append(None)
        if base.is_dir():
            for child in base.iterdir():
                if child.is_dir() and child.name[:1] == "g" and child.name[1:].isdigit():
                    found.append(int(child.name[1:]))
        return sorted(found, key=lambda g: -1 if g is None else g)

    # --- one batch -------------------------------------------------------------------------

    async def _run(self, batch_id: str, run: _Run) -> None:
        row = await asyncio.to_thread(self.batches.get, batch_id)
        if row.status == "validating":
            row = await asyncio.to_thread(self._validate, row)
            if row.status == "failed":
                return
        if row.status == "cancelling":
            run.stop.set()
        journal = self._journal(batch_id, run.lease.generation)
        try:
            done = await asyncio.to_thread(self._recover, row, journal, run.lease)
            if row.status in ("in_progress", "cancelling"):
                await self._execute_all(row, run, journal, done)
            await self._finish(batch_id, journal, done, run.lease)
        finally:
            journal.close()

    def _input(self, row: BatchRow) -> Iterator[BatchLine]:
        with self.files.path(row.input_file_id).open("rb") as f:
            for number, raw in enumerate(f, start=1):
                yield parse_line(raw.rstrip(b"\r\n"), number)

    def _validate(self, row: BatchRow) -> BatchRow:
        """The checks OpenAI makes between ``validating`` and ``in_progress``."""
        errors: list[dict[str, Any]] = []
        model: str | None = None
        for line in self._input(row):
            if line.url != row.endpoint:
                errors.append(
                    _error(
                        "mismatched_endpoint",
                        f"url {line.url} is not the batch's endpoint {row.endpoint}.",
                        line.number,
                    )
                )
            elif model is None:
                model = line.model
            elif line.model != model:
                errors.append(
                    _error(
                        "mismatched_model",
                        f"model {line.model!r} differs from {model!r} "
                        "on earlier lines; a batch uses one model.",
                        line.number,
                    )
                )
            if len(errors) >= 10:
                break
        if not errors and model is not None:
            try:
                model = self.inference.resolve(model, capability_of(row.endpoint)).name
            except CorralError as exc:
                errors.append(_error(exc.code or "invalid_request", exc.message, 1, "body.model"))
        if errors:
            return self.batches.update(
                row.id, status="failed", failed_at=time.time(), errors=errors, model=model
            )
        return self.batches.update(
            row.id, status="in_progress", in_progress_at=time.time(), model=model
        )

    def _recover(self, row: BatchRow, journal: Journal, lease: Lease) -> set[int]:
        """Lines already answered: those the database marks done, and those earlier
        generations' journals or the workers' spools answer that it does not (a
        gateway died between the fsync and the commit): adopted, each from one place."""
        line_of = {line.custom_id: line.number for line in self._input(row)}
        with Session(self.batches.engine) as session:
            indexed = {
                line: ok
                for line, ok in session.execute(
                    select(BatchDoneRow.line, BatchDoneRow.ok).where(
                        BatchDoneRow.batch_id == row.id
                    )
                )
            }
        adopted: dict[int, tuple[bool, int | None]] = {}
        for generation in self._generations(row.id):
            if generation == lease.generation:
                continue
            for line, ok in self._journal(row.id, generation).answered(line_of).items():
                if line not in indexed and line not in adopted:
                    adopted[line] = (ok, generation)
        spooled = [
            _result(line, 200, body)
            for line, body in self._spooled(row, line_of)
            if line.number not in indexed and line.number not in adopted
        ]
        if spooled:
            # Finished by a worker, never committed: the gateway died in between.
            journal.append(spooled)
            adopted.update({r.line: (r.ok, lease.generation) for r in spooled})
            log.info("batch %s: %d results picked up from worker spools", row.id, len(spooled))
        with Session(self.batches.engine) as session, session.begin():
            current = locked_if_held(session, lease)
            if adopted:
                session.execute(
                    insert(BatchDoneRow),
                    [
                        {"batch_id": row.id, "line": n, "ok": ok, "generation": generation}
                        for n, (ok, generation) in adopted.items()
                    ],
                )
                log.info(
                    "batch %s: %d answered lines recovered from its journals", row.id, len(adopted)
                )
            answered = {**indexed, **{n: ok for n, (ok, _) in adopted.items()}}
            current.completed = sum(1 for ok in answered.values() if ok)
            current.failed = len(answered) - current.completed
        return set(answered)

    def _spooled(
        self, row: BatchRow, line_of: dict[str, int]
    ) -> Iterator[tuple[BatchLine, dict[str, Any]]]:
        """Results workers spooled for this batch (see ``corral.worker.handoff``)."""
        by_number = {n: c for c, n in line_of.items()}
        for spool in sorted((self.directory / row.id).glob("spool-*.jsonl")):
            with spool.open("rb") as f:
                for raw in f:
                    try:
                        entry = json.loads(raw)
                    except json.JSONDecodeError:
                        continue  # torn by the crash
                    _, _, custom_id = str(entry.get("id", "")).partition("/")
                    number = line_of.get(custom_id)
                    if number is not None and isinstance(entry.get("body"), dict):
                        yield BatchLine(number, by_number[number], row.endpoint, {}), entry["body"]

    async def _execute_all(
        self, row: BatchRow, run: _Run, journal: Journal, done: set[int]
    ) -> None:
        results: asyncio.Queue[Result | None] = asyncio.Queue()
        committer = asyncio.create_task(self._commit_loop(run.lease, journal, results, done))
        slots = asyncio.Semaphore(self.in_flight)
        pending: set[asyncio.Task[None]] = set()
        assert row.model is not None
        try:
            # Streamed from the file, not loaded: a 50,000-line batch stays small.
            for line in _undone(self._input(row), done):
                await slots.acquire()
                if run.stop.is_set() or _expired(row):
                    slots.release()
                    break
                task = asyncio.create_task(self._one(row, line, results, slots))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            await results.put(None)
            await committer

    async def _one(
        self,
        row: BatchRow,
        line: BatchLine,
        results: asyncio.Queue[Result | None],
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            status, body = await self._call(row, line)
            await results.put(_result(line, status, body))
        finally:
            slots.release()

    async def _call(self, row: BatchRow, line: BatchLine) -> tuple[int, dict[str, Any]]:
        """One request through the inference service, at batch priority: (status, body).
        It waits for room in the model's line rather than failing when interactive
        traffic fills it (``patient``)."""
        assert row.model is not None
        tensors = v2_model(line.url) is not None
        try:
            # A V2 body names no model (its URL does) and never streams.
            body = line.body if tensors else {**line.body, "model": row.model, "stream": False}
            record = self.inference.resolve(row.model, capability_of(row.endpoint), body)
            owner = self.keys.by_id(row.owner) if self.keys and row.owner else None
            caller = Caller(Priority.BATCH, key=row.id, patient=True, principal=owner)
            headers = {REQUEST_ID_HEADER: f"{row.id}/{line.custom_id}", BATCH_HEADER: row.id}
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            exchange = await self.inference.send(record, line.url, data, caller, headers=headers)
            content = await exchange.reply.read()
            status = exchange.reply.status
            if tensors and status != 200:  # the worker's error, in V2's shape
                return status, {"error": worker_error(status, content).message}
            return status, json_object_of(content)
        except CorralError as exc:
            return exc.status, {"error": exc.message} if tensors else exc.to_openai()
        except Exception as exc:  # a bug fails this line (error file), not the batch
            error = InternalError(new_request_id())
            log.exception(
                "batch %s line %d (%s) failed [request %s]",
                row.id,
                line.number,
                line.custom_id,
                error.request_id,
                exc_info=exc,
            )
            return error.status, {"error": error.message} if tensors else error.to_openai()

    async def _commit_loop(
        self,
        lease: Lease,
        journal: Journal,
        results: asyncio.Queue[Result | None],
        done: set[int],
    ) -> None:
        finished = False
        while not finished:
            first = await results.get()
            group = [] if first is None else [first]
            finished = first is None
            while not finished and not results.empty() and len(group) < COMMIT_GROUP:
                item = results.get_nowait()
                if item is None:
                    finished = True
                else:
                    group.append(item)
            if group:
                await asyncio.to_thread(self._commit, lease, journal, group)
                done.update(r.line for r in group)

    def _commit(self, lease: Lease, journal: Journal, group: list[Result]) -> None:
        journal.append(group)  # durable first ...
        ok = sum(1 for r in group if r.ok)
        now = time.time()
        with Session(self.batches.engine) as session, session.begin():  # ... then indexed
            row = locked_if_held(session, lease)  # first: a lost lease marks nothing
            session.execute(
                insert(BatchDoneRow),
                [
                    {
                        "batch_id": lease.batch_id,
                        "line": r.line,
                        "ok": r.ok,
                        "done_at": now,
                        "generation": lease.generation,
                    }
                    for r in group
                ],
            )
            row.completed += ok
            row.failed += len(group) - ok

    # --- the end of a batch ----------------------------------------------------------------

    async def _finish(self, batch_id: str, journal: Journal, done: set[int], lease: Lease) -> None:
        row = await asyncio.to_thread(self.batches.get, batch_id)
        now = time.time()
        final: dict[str, Any]
        if row.status == "cancelling":
            final = {"status": "cancelled", "cancelled_at": now}
        elif row.total > len(done) and _expired(row):
            await asyncio.to_thread(self._expire_rest, row, journal, done, lease)
            final = {"status": "expired", "expired_at": now}
        elif row.total > len(done):
            return  # stopped early (shutting down, lease lost): resumed by its next holder
        else:
            final = {"status": "completed", "completed_at": now}
            await asyncio.to_thread(
                self._update_held, lease, status="finalizing", finalizing_at=now
            )
        journal.close()
        ids = await asyncio.to_thread(self._publish, row)
        await asyncio.to_thread(self._update_held, lease, **ids, **final)
        for spool in (self.directory / batch_id).glob("spool-*.jsonl"):
            spool.unlink(missing_ok=True)  # everything in them is in the journal now
        log.info("batch %s %s", batch_id, final["status"])

    def _expire_rest(self, row: BatchRow, journal: Journal, done: set[int], lease: Lease) -> None:
        """Requests the window left unrun go to the error file, as OpenAI reports them."""
        message = "This request could not be executed before the completion window expired."
        group = [
            Result(
                line.number,
                False,
                _record(line, None, {"code": "batch_expired", "message": message}),
            )
            for line in _undone(self._input(row), done)
        ]
        for start in range(0, len(group), COMMIT_GROUP):
            self._commit(lease, journal, group[start : start + COMMIT_GROUP])
        done.update(r.line for r in group)

    def _publish_what_is_done(self, batch_id: str) -> dict[str, str | None]:
        """A failed batch still hands over the results it has (none lost to the bug)."""
        try:
            return self._publish(self.batches.get(batch_id))
        except Exception:
            log.exception("batch %s: could not publish the results it has", batch_id)
            return {}

    def _publish(self, row: BatchRow) -> dict[str, str | None]:
        """The output and error files: for each line the database marks done, the
        result from the journal of the generation that marked it (exactly once, even
        if a gateway that lost its lease wrote more after)."""
        line_of = {line.custom_id: line.number for line in self._input(row)}
        with Session(self.batches.engine) as session:
            marked = {
                line: generation
                for line, generation in session.execute(
                    select(BatchDoneRow.line, BatchDoneRow.generation).where(
                        BatchDoneRow.batch_id == row.id
                    )
                )
            }
        base = self.directory / row.id
        base.mkdir(parents=True, exist_ok=True)
        staged = {True: base / "output.publish", False: base / "errors.publish"}
        counts = {True: 0, False: 0}
        written: set[int] = set()
        with staged[True].open("wb") as out, staged[False].open("wb") as err:
            for generation in self._generations(row.id):
                for ok, record in self._journal(row.id, generation).records():
                    line = line_of.get(str(record.get("custom_id")))
                    if line is None or line in written:
                        continue
                    if marked.get(line, _UNSEEN) != generation:
                        continue  # written by a generation that lost the lease
                    written.add(line)
                    (out if ok else err).write(
                        json.dumps(record, separators=(",", ":")).encode() + b"\n"
                    )
                    counts[ok] += 1
        ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for ok, key, suffix in (
            (True, "output_file_id", "output"),
            (False, "error_file_id", "error"),
        ):
            if counts[ok]:
                name = f"{row.id}_{suffix}.jsonl"
                stored = self.files.add(
                    staged[ok], name, "batch_output", counts[ok], owner=row.owner
                )
                ids[key] = stored.id
            else:
                staged[ok].unlink(missing_ok=True)
        return ids


def _undone(lines: Iterator[BatchLine], done: set[int]) -> Iterator[BatchLine]:
    return (line for line in lines if line.number not in done)


def _expired(row: BatchRow) -> bool:
    return row.expires_at is not None and time.time() >= row.expires_at


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _record(
    line: BatchLine, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": "batch_req_" + uuid.uuid4().hex[:24],
        "custom_id": line.custom_id,
        "response": response,
        "error": error,
    }


def _result(line: BatchLine, status: int, body: dict[str, Any]) -> Result:
    """OpenAI's output line: the response whatever its status; errors in the error file."""
    response = {"status_code": status, "request_id": uuid.uuid4().hex, "body": body}
    return Result(line.number, status == 200, _record(line, response, None))
