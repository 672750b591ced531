"""Run batches inside the server, at batch priority, durably.

Each active batch gets a task that streams its input file, skipping lines already
answered, and keeps a bounded number of requests waiting in the scheduler at
``Priority.BATCH``: interactive requests go first and batch requests fill the slots
they leave idle, in the same continuous batches. Batches wait in the model's queue
under their own key, so several batches on one model take turns; batches on
different models run side by side.

Results go to a committer that appends them to the batch's journal (fsync) and then
marks their lines done in the database, in groups. Batches are cut into chunks, and
every gateway on the database works on chunks it holds the lease of; the holder of
the batch's own lease coordinates it (``leases.py``). Each claim is a new generation
with a journal of its own, and starts by adopting what earlier generations' journals
and the workers' spools answered (see ``journal.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from corral.batch.batches import Batches
from corral.batch.files import FileStore
from corral.batch.journal import Journal, Result
from corral.batch.leases import (
    ChunkLease,
    Lease,
    LeaseLost,
    Leases,
    chunk_bounds,
    count_done,
    locked_chunk_if_held,
    locked_if_held,
    mark_if_complete,
    recount,
)
from corral.batch.lines import BatchLine, parse_line, v2_model
from corral.batch.tables import BatchDoneRow, BatchRow
from corral.errors import (
    CorralError,
    InternalError,
    WorkerCrashed,
    WorkerUnavailable,
    new_request_id,
)
from corral.keys.store import KeyStore
from corral.protocol.handoff import BATCH_HEADER, REQUEST_ID_HEADER
from corral.registry.records import Capability
from corral.scheduler.queue import Priority
from corral.service.inference import Caller, InferenceService
from corral.service.worker_client import json_object_of, worker_error

log = logging.getLogger("corral.batch")
COMMIT_GROUP = 512  # most results per fsync + transaction
LOSS_ATTEMPTS = 2  # a line whose worker died under it runs once more
CHUNK_LINES = 500  # lines per chunk: the unit gateways split a batch by
WATCH_SECONDS = 2.0  # how often active batches are looked for
_JOURNAL_DIR = re.compile(r"(?:c(?P<chunk>\d+)-)?g(?P<generation>\d+)")
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
    """This gateway's work on one batch: as its coordinator (``lease``: the batch's
    lease) or as a helper taking chunks of a batch another gateway coordinates."""

    lease: Lease | None
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
        chunk_lines: int = CHUNK_LINES,
    ) -> None:
        self.batches = batches
        self.files = files
        self.inference = inference
        self.directory = directory
        self.in_flight = in_flight
        self.keys = keys  # a batch's requests run as (and are limited as) its key
        self.leases = leases or Leases(batches.engine, "local", 15.0)
        self.chunk_lines = chunk_lines
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
        """Coordinate every active batch whose lease this gateway can take (new ones,
        those a restart left, those of a gateway that stopped renewing), and help with
        the chunks of batches other gateways coordinate."""
        while True:
            self._wake.clear()
            try:
                rows = await asyncio.to_thread(self.batches.active)
            except Exception:
                log.exception("cannot list batches")
                rows = []
            for row in rows:
                if row.id in self._runs:
                    continue
                try:
                    await self._take_on(row)
                except Exception:
                    log.exception("cannot take on batch %s", row.id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), WATCH_SECONDS)

    async def _take_on(self, row: BatchRow) -> None:
        if self.leases.claimable(row):
            lease = await asyncio.to_thread(self.leases.claim, row.id)
            if lease is not None:
                if row.lease_owner not in (None, self.leases.owner):
                    log.info("batch %s: taken over from %s", row.id, row.lease_owner)
                self._launch(row.id, _Run(lease))
                return
        if row.status == "in_progress" and await asyncio.to_thread(self.leases.has_work, row.id):
            self._launch(row.id, _Run(None))

    def _launch(self, batch_id: str, run: _Run) -> None:
        self._runs[batch_id] = run
        work = self._coordinate(batch_id, run) if run.lease else self._help(batch_id, run)
        run.task = asyncio.create_task(work, name=batch_id)

    async def _coordinate(self, batch_id: str, run: _Run) -> None:
        assert run.lease is not None
        lease = run.lease

        def lost() -> None:
            run.lost = True
            run.stop.set()

        renew = functools.partial(self.leases.renew, lease)
        heartbeat = asyncio.create_task(
            self._keep(batch_id, run, renew, lost), name=f"{batch_id}-lease"
        )
        try:
            await self._run(batch_id, run, lease)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            run.lost = True
            log.warning("batch %s: another gateway holds it now; stopped here", batch_id)
        except Exception:
            error = InternalError(new_request_id())
            log.exception("batch %s failed [request %s]", batch_id, error.request_id)
            try:
                await asyncio.to_thread(self._seal, lease)
                ids = await asyncio.to_thread(self._publish_what_is_done, batch_id)
                await asyncio.to_thread(
                    self._update_held,
                    lease,
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
                    await asyncio.to_thread(self.leases.release, lease)

    async def _help(self, batch_id: str, run: _Run) -> None:
        """Work on chunks of a batch another gateway coordinates, while there are any."""
        try:
            row = await asyncio.to_thread(self.batches.get, batch_id)
            await self._work(row, run, coordinator=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s: helping with it failed", batch_id)
        finally:
            self._runs.pop(batch_id, None)

    async def _keep(
        self,
        batch_id: str,
        run: _Run,
        renew: Callable[[], str | None],
        lost: Callable[[], None],
    ) -> None:
        """Renew a lease (the batch's or a chunk's) every third of its term; call
        ``lost`` once it is no longer ours, and stop the run on a cancel made on any
        gateway (the renewal reads the batch's status)."""
        while True:
            await asyncio.sleep(self.leases.seconds / 3)
            try:
                status = await asyncio.to_thread(renew)
            except Exception:
                log.exception("batch %s: cannot renew a lease", batch_id)
                continue
            if status is None:
                lost()
                return
            if status == "cancelling":
                run.stop.set()

    def _update_held(self, lease: Lease, **values: Any) -> None:
        """Change the batch's row, if ``lease`` still holds it (else ``LeaseLost``)."""
        with Session(self.batches.engine) as session, session.begin():
            row = locked_if_held(session, lease)
            for name, value in values.items():
                setattr(row, name, value)

    def _seal(self, lease: Lease, **values: Any) -> None:
        """No line may be marked done from now on (the results are being published);
        the counters are taken from the lines done, which can no longer change."""
        with Session(self.batches.engine) as session, session.begin():
            row = locked_if_held(session, lease)
            for name, value in {"finalizing_at": time.time(), **values}.items():
                setattr(row, name, value)
            session.flush()
            recount(session, lease.batch_id)

    # --- journals --------------------------------------------------------------------------

    def _journal(self, batch_id: str, name: str | None) -> Journal:
        base = self.directory / batch_id
        return Journal(base if name is None else base / name)

    def _journals(
        self, batch_id: str, chunk: int | None = None
    ) -> list[tuple[int | None, str | None]]:
        """(generation, directory name) of the journals on disk: the batch's first (from
        before leases: generation None), whole-batch generations (``g<n>``), and the
        chunks' (``c<chunk>-g<n>``; only ``chunk``'s when one is given)."""
        base = self.directory / batch_id
        found: list[tuple[int | None, str | None]] = []
        if (base / "output.jsonl").exists() or (base / "errors.jsonl").exists():
            found.append((None, None))
        if base.is_dir():
            for child in base.iterdir():
                match = _JOURNAL_DIR.fullmatch(child.name)
                if not child.is_dir() or match is None:
                    continue
                of_chunk = match.group("chunk")
                if chunk is not None and of_chunk is not None and int(of_chunk) != chunk:
                    continue
                found.append((int(match.group("generation")), child.name))
        return sorted(found, key=lambda g: -1 if g[0] is None else g[0])

    # --- one batch -------------------------------------------------------------------------

    async def _run(self, batch_id: str, run: _Run, lease: Lease) -> None:
        row = await asyncio.to_thread(self.batches.get, batch_id)
        if row.status == "validating":
            row = await asyncio.to_thread(self._validate, row)
            if row.status == "failed":
                return
        if row.status == "cancelling":
            run.stop.set()
        if row.status in ("in_progress", "cancelling"):
            await asyncio.to_thread(self._make_chunks, row, lease)
            await self._work(row, run, coordinator=True)
        await self._finish(batch_id, lease)

    def _make_chunks(self, row: BatchRow, lease: Lease) -> None:
        offsets = []
        position = 0
        with self.files.path(row.input_file_id).open("rb") as f:
            for raw in f:
                offsets.append(position)
                position += len(raw)
        self.leases.make_chunks(lease, chunk_bounds(offsets, self.chunk_lines))

    async def _work(self, row: BatchRow, run: _Run, coordinator: bool) -> None:
        """Take chunks and run them, the next one as soon as the last has sent all its
        requests (so the slots never drain between chunks), until none is left for
        this gateway: a helper then stops; the coordinator waits for the chunks other
        gateways hold (taking back any whose gateway died) until all are done."""
        slots = asyncio.Semaphore(self.in_flight)
        running: set[asyncio.Task[None]] = set()
        try:
            while not run.stop.is_set() and not _expired(row):
                chunk = await asyncio.to_thread(self.leases.claim_chunk, row.id)
                if chunk is None:
                    if running:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    if not coordinator:
                        return
                    if await asyncio.to_thread(self.leases.chunks_left, row.id) == 0:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.stop.wait(), WATCH_SECONDS / 2)
                    continue
                sent = asyncio.Event()
                task = asyncio.create_task(self._run_chunk(row, run, chunk, slots, sent))
                running.add(task)
                task.add_done_callback(running.discard)
                await sent.wait()  # set when the chunk has sent its last line, or ended
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _run_chunk(
        self,
        row: BatchRow,
        run: _Run,
        chunk: ChunkLease,
        slots: asyncio.Semaphore,
        sent: asyncio.Event,
    ) -> None:
        stop = asyncio.Event()
        renew = functools.partial(self.leases.renew_chunk, chunk)
        heartbeat = asyncio.create_task(self._keep(row.id, run, renew, stop.set))
        journal = self._journal(row.id, f"c{chunk.index}-g{chunk.generation}")
        try:
            done = await asyncio.to_thread(self._recover, row, journal, chunk)
            await self._execute(row, (run.stop, stop), journal, done, chunk, slots, sent)
        except LeaseLost:
            log.warning("batch %s chunk %d: another gateway holds it now", row.id, chunk.index)
        finally:
            sent.set()
            heartbeat.cancel()
            journal.close()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.leases.release_chunk, chunk)

    def _input(self, row: BatchRow, chunk: ChunkLease | None = None) -> Iterator[BatchLine]:
        """The batch's input lines, parsed; only ``chunk``'s when given (read from its
        byte offset: a chunk of a 50,000-line file does not read the whole file)."""
        with self.files.path(row.input_file_id).open("rb") as f:
            first = 1
            if chunk is not None:
                f.seek(chunk.offset)
                first = chunk.first
            for number, raw in enumerate(f, start=first):
                if chunk is not None and number > chunk.last:
                    return
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

    def _recover(self, row: BatchRow, journal: Journal, chunk: ChunkLease) -> set[int]:
        """The chunk's lines already answered: those the database marks done, and those
        earlier generations' journals or the workers' spools answer that it does not (a
        gateway died between the fsync and the commit): adopted, each from one place."""
        line_of = {line.custom_id: line.number for line in self._input(row, chunk)}
        with Session(self.batches.engine) as session:
            indexed = {
                line: ok
                for line, ok in session.execute(
                    select(BatchDoneRow.line, BatchDoneRow.ok).where(
                        BatchDoneRow.batch_id == row.id,
                        BatchDoneRow.line >= chunk.first,
                        BatchDoneRow.line <= chunk.last,
                    )
                )
            }
        adopted: dict[int, tuple[bool, int | None]] = {}
        for generation, name in self._journals(row.id, chunk.index):
            if generation == chunk.generation:
                continue
            for line, ok in self._journal(row.id, name).answered(line_of).items():
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
            adopted.update({r.line: (r.ok, chunk.generation) for r in spooled})
            log.info("batch %s: %d results picked up from worker spools", row.id, len(spooled))
        with Session(self.batches.engine) as session, session.begin():
            batch, chunk_row = locked_chunk_if_held(session, chunk)
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
                recount(session, batch.id)
            mark_if_complete(session, chunk, chunk_row)
        return set(indexed) | set(adopted)

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

    async def _execute(
        self,
        row: BatchRow,
        stops: tuple[asyncio.Event, ...],
        journal: Journal,
        done: set[int],
        chunk: ChunkLease,
        slots: asyncio.Semaphore,
        sent: asyncio.Event,
    ) -> None:
        """Send the chunk's unanswered lines, at most ``slots`` at once across the
        chunks this gateway runs; ``sent`` is set once the last one is on its way."""
        results: asyncio.Queue[Result | None] = asyncio.Queue()
        committer = asyncio.create_task(self._commit_loop(chunk, journal, results, done))
        pending: set[asyncio.Task[None]] = set()
        assert row.model is not None
        try:
            for line in _undone(self._input(row, chunk), done):
                await slots.acquire()
                if any(stop.is_set() for stop in stops) or _expired(row) or committer.done():
                    slots.release()
                    break
                task = asyncio.create_task(self._one(row, line, results, slots))
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent.set()
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
        traffic fills it (``patient``). A line whose worker died under it (a crash, a
        lost Ray node) runs once more, on the worker started again; a second death
        is its error: a line that kills its worker must not do so forever."""
        tensors = v2_model(line.url) is not None
        for attempt in range(1, LOSS_ATTEMPTS + 1):
            try:
                return await self._call_once(row, line, tensors)
            except (WorkerCrashed, WorkerUnavailable) as exc:
                if attempt < LOSS_ATTEMPTS:
                    log.warning(
                        "batch %s line %d: %s; running it again", row.id, line.number, exc.message
                    )
                    continue
                return exc.status, {"error": exc.message} if tensors else exc.to_openai()
        raise AssertionError("unreachable")  # the loop returns

    async def _call_once(
        self, row: BatchRow, line: BatchLine, tensors: bool
    ) -> tuple[int, dict[str, Any]]:
        assert row.model is not None
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
        except (WorkerCrashed, WorkerUnavailable):
            raise
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
        chunk: ChunkLease,
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
                await asyncio.to_thread(self._commit, chunk, journal, group)
                done.update(r.line for r in group)

    def _commit(self, holder: ChunkLease | Lease, journal: Journal, group: list[Result]) -> None:
        """Results, durable first, then marked done with the holder's generation, in a
        transaction that first checks the holder still holds its lease (a chunk's
        also that the batch is not sealed): a lost lease marks nothing."""
        journal.append(group)
        ok = sum(1 for r in group if r.ok)
        now = time.time()
        with Session(self.batches.engine) as session, session.begin():
            if isinstance(holder, ChunkLease):
                batch, chunk_row = locked_chunk_if_held(session, holder)
            else:
                batch, chunk_row = locked_if_held(session, holder), None
            session.execute(
                insert(BatchDoneRow),
                [
                    {
                        "batch_id": holder.batch_id,
                        "line": r.line,
                        "ok": r.ok,
                        "done_at": now,
                        "generation": holder.generation,
                    }
                    for r in group
                ],
            )
            count_done(session, batch.id, ok, len(group) - ok)
            if isinstance(holder, ChunkLease) and chunk_row is not None:
                mark_if_complete(session, holder, chunk_row)

    # --- the end of a batch ----------------------------------------------------------------

    async def _finish(self, batch_id: str, lease: Lease) -> None:
        """Seal the batch (no line is marked done after this), then publish what the
        database marks done, once: only the coordinator does this."""
        row = await asyncio.to_thread(self.batches.get, batch_id)
        answered = await asyncio.to_thread(self._answered, batch_id)
        now = time.time()
        final: dict[str, Any]
        if row.status == "cancelling":
            await asyncio.to_thread(self._seal, lease)
            final = {"status": "cancelled", "cancelled_at": now}
        elif row.status == "finalizing" or row.total <= len(answered):
            await asyncio.to_thread(self._seal, lease, status="finalizing")
            final = {"status": "completed", "completed_at": now}
        elif _expired(row):
            await asyncio.to_thread(self._seal, lease)
            await asyncio.to_thread(self._expire_rest, row, lease)
            final = {"status": "expired", "expired_at": now}
        else:
            return  # stopped early (shutting down, lease lost): its next holder carries on
        ids = await asyncio.to_thread(self._publish, row)
        await asyncio.to_thread(self._update_held, lease, **ids, **final)
        for spool in (self.directory / batch_id).glob("spool-*.jsonl"):
            spool.unlink(missing_ok=True)  # everything in them is in a journal now
        log.info("batch %s %s", batch_id, final["status"])

    def _answered(self, batch_id: str) -> set[int]:
        with Session(self.batches.engine) as session:
            return set(
                session.scalars(select(BatchDoneRow.line).where(BatchDoneRow.batch_id == batch_id))
            )

    def _expire_rest(self, row: BatchRow, lease: Lease) -> None:
        """Requests the window left unrun go to the error file, as OpenAI reports them
        (after the seal: the set of unanswered lines can no longer change)."""
        message = "This request could not be executed before the completion window expired."
        done = self._answered(row.id)
        group = [
            Result(
                line.number,
                False,
                _record(line, None, {"code": "batch_expired", "message": message}),
            )
            for line in _undone(self._input(row), done)
        ]
        journal = self._journal(row.id, f"g{lease.generation}")
        try:
            for start in range(0, len(group), COMMIT_GROUP):
                self._commit(lease, journal, group[start : start + COMMIT_GROUP])
        finally:
            journal.close()

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
            for generation, name in self._journals(row.id):
                for ok, record in self._journal(row.id, name).records():
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
