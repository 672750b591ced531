"""Which gateway works on what of a batch: leases in the database, renewed while held.

Several gateways can share one database (Postgres) and one ``CORRAL_HOME``. A batch
has a lease of its own, held by the gateway that **coordinates** it (validates it,
cuts it into chunks, publishes it), and each **chunk** (a run of lines) has one, held
by the gateway working on it: so all gateways share a batch's work. A gateway that
dies stops renewing its leases; once they expire, others take them over.

Every claim, the batch's or a chunk's, gets a new **generation** (a counter on the
batch's row): the claimant appends to a journal of its own and marks each line done
with its generation, in a transaction that first checks the lease is still its own
and the batch not sealed. So a gateway that lost its lease (paused past the expiry,
cut off from the database) can neither mark a line done nor have its late lines
published: the published files hold, for each line, the one result the database says
is done, from that generation's journal.

Writers lock the batch's row first, then a chunk's, so two gateways never deadlock.
A gateway's id is stable across its restarts (``CORRAL_GATEWAY_ID``, by default host
and port), so a gateway restarted after kill -9 takes its own leases back at once
instead of waiting for them to expire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.orm import Session

from corral.batch.tables import BatchChunkRow, BatchDoneRow, BatchRow

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


class LeaseLost(Exception):
    """Another gateway holds this batch now: stop quietly, it carries on."""


@dataclass(frozen=True)
class Lease:
    """The batch's own lease: its holder validates it, cuts it into chunks, works on
    chunks like any gateway, and publishes it when every chunk is done."""

    batch_id: str
    owner: str
    generation: int


@dataclass(frozen=True)
class ChunkLease:
    """One chunk's lease: lines ``first``..``last`` (starting at byte ``offset``)."""

    batch_id: str
    index: int
    first: int
    last: int
    offset: int
    owner: str
    generation: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


class Leases:
    def __init__(self, engine: Engine, owner: str, seconds: float) -> None:
        self.engine = engine
        self.owner = owner
        self.seconds = seconds
        # Chunks this process works on now: one of ours in the database but not here
        # is left from before a restart, and may be taken back at once.
        self._working: set[tuple[str, int]] = set()

    def claimable(self, row: BatchRow, now: float | None = None) -> bool:
        """Might this gateway claim ``row`` (a cheap check before ``claim``)?"""
        now = time.time() if now is None else now
        return (
            row.lease_owner is None
            or row.lease_owner == self.owner
            or (row.lease_until or 0.0) < now
        )

    def claim(self, batch_id: str) -> Lease | None:
        """Take the batch's lease if it is free, expired or already ours; a new
        generation each time. None: another gateway holds it, or it is not active."""
        now = time.time()
        with Session(self.engine) as session, session.begin():
            row = session.scalars(
                select(BatchRow).where(BatchRow.id == batch_id).with_for_update()
            ).first()
            if row is None or row.status not in ACTIVE or not self.claimable(row, now):
                return None
            row.lease_owner = self.owner
            row.lease_until = now + self.seconds
            row.lease_generation = next_generation(row)
            return Lease(batch_id, self.owner, row.lease_generation)

    def renew(self, lease: Lease) -> str | None:
        """Extend the lease; the batch's status, or None if the lease is no longer ours."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(BatchRow)
                .where(*held_by(lease))
                .values(lease_until=time.time() + self.seconds)
                .returning(BatchRow.status)
            ).first()
            return None if result is None else str(result[0])

    def release(self, lease: Lease) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(BatchRow).where(*held_by(lease)).values(lease_owner=None, lease_until=None)
            )

    # --- chunks ----------------------------------------------------------------------------

    def make_chunks(self, lease: Lease, bounds: list[tuple[int, int, int]]) -> None:
        """Cut the batch into chunks (first line, last line, byte offset), once."""
        with Session(self.engine) as session, session.begin():
            locked_if_held(session, lease)
            exists = session.scalar(
                select(func.count()).where(BatchChunkRow.batch_id == lease.batch_id)
            )
            if exists:
                return
            if bounds:
                session.execute(
                    insert(BatchChunkRow),
                    [
                        {
                            "batch_id": lease.batch_id,
                            "chunk": i,
                            "first_line": first,
                            "last_line": last,
                            "offset": offset,
                            "done": False,
                        }
                        for i, (first, last, offset) in enumerate(bounds)
                    ],
                )

    def _chunk_claimable(self, row: BatchChunkRow, now: float) -> bool:
        if row.done:
            return False
        if row.lease_owner is None or (row.lease_until or 0.0) < now:
            return True
        return row.lease_owner == self.owner and (row.batch_id, row.chunk) not in self._working

    def claim_chunk(self, batch_id: str) -> ChunkLease | None:
        """The first chunk no live gateway works on, with a new generation; None when
        there is none, or the batch is not running (cancelled, sealed, ended)."""
        now = time.time()
        with Session(self.engine) as session, session.begin():
            batch = session.scalars(
                select(BatchRow).where(BatchRow.id == batch_id).with_for_update()
            ).first()
            if batch is None or batch.status != "in_progress" or batch.finalizing_at:
                return None
            chunks = session.scalars(
                select(BatchChunkRow)
                .where(BatchChunkRow.batch_id == batch_id, BatchChunkRow.done.is_(False))
                .order_by(BatchChunkRow.chunk)
                .with_for_update()
            ).all()
            row = next((c for c in chunks if self._chunk_claimable(c, now)), None)
            if row is None:
                return None
            generation = next_generation(batch)
            row.lease_owner = self.owner
            row.lease_until = now + self.seconds
            row.generation = generation
            self._working.add((batch_id, row.chunk))
            return ChunkLease(
                batch_id,
                row.chunk,
                row.first_line,
                row.last_line,
                row.offset,
                self.owner,
                generation,
            )

    def renew_chunk(self, chunk: ChunkLease) -> str | None:
        """Extend the chunk's lease; the batch's status, or None if it is not ours."""
        with Session(self.engine) as session, session.begin():
            held = session.execute(
                update(BatchChunkRow)
                .where(*chunk_held_by(chunk))
                .values(lease_until=time.time() + self.seconds)
                .returning(BatchChunkRow.chunk)
            ).first()
            if held is None:
                return None
            return session.scalar(select(BatchRow.status).where(BatchRow.id == chunk.batch_id))

    def release_chunk(self, chunk: ChunkLease) -> None:
        """Done with it here (finished, stopped or lost): free it for any gateway."""
        self._working.discard((chunk.batch_id, chunk.index))
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(BatchChunkRow)
                .where(*chunk_held_by(chunk))
                .values(lease_owner=None, lease_until=None)
            )

    def chunks_left(self, batch_id: str) -> int:
        with Session(self.engine) as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        BatchChunkRow.batch_id == batch_id, BatchChunkRow.done.is_(False)
                    )
                )
                or 0
            )

    def has_work(self, batch_id: str) -> bool:
        """Is a chunk of this batch free for this gateway now (a cheap read)?"""
        now = time.time()
        with Session(self.engine) as session:
            chunks = session.scalars(
                select(BatchChunkRow).where(
                    BatchChunkRow.batch_id == batch_id, BatchChunkRow.done.is_(False)
                )
            ).all()
            return any(self._chunk_claimable(c, now) for c in chunks)


def held_by(lease: Lease) -> tuple[Any, ...]:
    """The batch's row, while ``lease`` still holds it (a WHERE clause)."""
    return (
        BatchRow.id == lease.batch_id,
        BatchRow.lease_owner == lease.owner,
        BatchRow.lease_generation == lease.generation,
    )


def chunk_held_by(chunk: ChunkLease) -> tuple[Any, ...]:
    """The chunk's row, while ``chunk`` still holds it (a WHERE clause)."""
    return (
        BatchChunkRow.batch_id == chunk.batch_id,
        BatchChunkRow.chunk == chunk.index,
        BatchChunkRow.lease_owner == chunk.owner,
        BatchChunkRow.generation == chunk.generation,
    )


def next_generation(batch: BatchRow) -> int:
    """A new generation of the batch (its row is locked): one per claim, the batch's
    own and its chunks', so no two claims ever share a journal."""
    batch.generations = max(batch.generations or 0, batch.lease_generation or 0) + 1
    return batch.generations


def chunk_bounds(offsets: list[int], size: int) -> list[tuple[int, int, int]]:
    """(first line, last line, byte offset) of each chunk of ``size`` lines, from the
    byte offset of every line."""
    return [
        (start + 1, min(start + size, len(offsets)), offsets[start])
        for start in range(0, len(offsets), size)
    ]


def locked_chunk_if_held(session: Session, chunk: ChunkLease) -> tuple[BatchRow, BatchChunkRow]:
    """The batch's row and the chunk's, locked (the batch's first, as every writer
    does), if the chunk's lease is still ``chunk``'s and the batch is not sealed for
    publishing; else ``LeaseLost``."""
    batch = session.scalars(
        select(BatchRow).where(BatchRow.id == chunk.batch_id).with_for_update()
    ).first()
    row = session.scalars(
        select(BatchChunkRow)
        .where(BatchChunkRow.batch_id == chunk.batch_id, BatchChunkRow.chunk == chunk.index)
        .with_for_update()
    ).first()
    if (
        batch is None
        or row is None
        or batch.finalizing_at is not None
        or row.lease_owner != chunk.owner
        or row.generation != chunk.generation
    ):
        raise LeaseLost(chunk.batch_id)
    return batch, row


def mark_if_complete(session: Session, chunk: ChunkLease, row: BatchChunkRow) -> None:
    """Mark the chunk done once every one of its lines is."""
    answered = session.scalar(
        select(func.count()).where(
            BatchDoneRow.batch_id == chunk.batch_id,
            BatchDoneRow.line >= chunk.first,
            BatchDoneRow.line <= chunk.last,
        )
    )
    if (answered or 0) >= chunk.size:
        row.done = True


def recount(session: Session, batch_id: str) -> None:
    """The batch's counters from its done lines, in one statement (a concurrent
    commit's increment is never lost to it)."""

    def done(ok: bool) -> Any:
        return (
            select(func.count())
            .where(BatchDoneRow.batch_id == batch_id, BatchDoneRow.ok.is_(ok))
            .scalar_subquery()
        )

    session.execute(
        update(BatchRow)
        .where(BatchRow.id == batch_id)
        .values(completed=done(True), failed=done(False))
    )


def count_done(session: Session, batch_id: str, ok: int, failed: int) -> None:
    """Add to the batch's counters in SQL: two commits at once (two chunks, two
    gateways) both count, where read-add-write in Python would lose one."""
    session.execute(
        update(BatchRow)
        .where(BatchRow.id == batch_id)
        .values(completed=BatchRow.completed + ok, failed=BatchRow.failed + failed)
    )


def locked_if_held(session: Session, lease: Lease) -> BatchRow:
    """The batch's row, locked for this transaction, if ``lease`` still holds it; else
    ``LeaseLost`` (the transaction then changes nothing)."""
    row = session.scalars(
        select(BatchRow).where(BatchRow.id == lease.batch_id).with_for_update()
    ).first()
    if row is None or row.lease_owner != lease.owner or row.lease_generation != lease.generation:
        raise LeaseLost(lease.batch_id)
    return row
