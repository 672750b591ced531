"""Which gateway runs a batch: a lease in the database, renewed while it runs.

Several gateways can share one database (Postgres) and one ``CORRAL_HOME``. Each
runs a batch only while it holds the batch's lease; a gateway that dies stops
renewing it, and once it has expired another gateway takes the batch over. Every
claim starts a new **generation**: the claimant appends to a journal of its own
(``batches/<id>/g<generation>/``) and marks each line done with its generation, in
a transaction that first checks the lease is still its own. So a gateway that lost
its lease (paused past the expiry, cut off from the database) can neither mark a
line done nor have its late lines published: the published files hold, for each
line, the one result the database says is done, from that generation's journal.

A gateway's id is stable across its restarts (``CORRAL_GATEWAY_ID``, by default
host and port), so a gateway restarted after kill -9 takes its own batches back at
once instead of waiting for their leases to expire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from corral.batch.tables import BatchRow

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


class LeaseLost(Exception):
    """Another gateway holds this batch now: stop quietly, it carries on."""


@dataclass(frozen=True)
class Lease:
    batch_id: str
    owner: str
    generation: int


class Leases:
    def __init__(self, engine: Engine, owner: str, seconds: float) -> None:
        self.engine = engine
        self.owner = owner
        self.seconds = seconds

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
            row.lease_generation = (row.lease_generation or 0) + 1
            return Lease(batch_id, self.owner, row.lease_generation)

    def renew(self, lease: Lease) -> str | None:
        """Extend the lease; the batch's status, or None if the lease is no longer ours."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(BatchRow)
                .where(
                    BatchRow.id == lease.batch_id,
                    BatchRow.lease_owner == lease.owner,
                    BatchRow.lease_generation == lease.generation,
                )
                .values(lease_until=time.time() + self.seconds)
                .returning(BatchRow.status)
            ).first()
            return None if result is None else str(result[0])

    def release(self, lease: Lease) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(BatchRow)
                .where(
                    BatchRow.id == lease.batch_id,
                    BatchRow.lease_owner == lease.owner,
                    BatchRow.lease_generation == lease.generation,
                )
                .values(lease_owner=None, lease_until=None)
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
