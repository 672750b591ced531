"""Batch objects: creating, reading, listing and cancelling them (the runner runs them).

Status follows OpenAI's life cycle: ``validating`` -> ``in_progress`` ->
``finalizing`` -> ``completed``, or ``failed`` (the input is not a valid batch),
``expired`` (the completion window passed), ``cancelling`` -> ``cancelled``.
"""

from __future__ import annotations

import builtins
import time
import uuid
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from corral.batch.files import FileStore
from corral.batch.lines import ENDPOINT_NAMES, known_endpoint
from corral.batch.pages import newest_first, visible_to
from corral.batch.tables import BatchDoneRow, BatchRow
from corral.errors import BatchNotFound, InvalidRequest
from corral.keys.store import Principal, sees
from corral.units import parse_keep_alive

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")


def window_seconds(window: str) -> float:
    """OpenAI accepts only "24h"; Corral also takes other durations ("1h", "30m")."""
    try:
        seconds = parse_keep_alive(window)
    except ValueError:
        seconds = None
    if seconds is None or seconds <= 0:
        raise InvalidRequest(
            f"completion_window must be a duration such as '24h', not {window!r}.",
            param="completion_window",
        )
    return seconds


def batch_object(row: BatchRow) -> dict[str, Any]:
    """OpenAI's Batch object."""

    def ts(value: float | None) -> int | None:
        return int(value) if value is not None else None

    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "model": row.model,
        "errors": {"object": "list", "data": row.errors} if row.errors else None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": int(row.created_at),
        "in_progress_at": ts(row.in_progress_at),
        "expires_at": ts(row.expires_at),
        "finalizing_at": ts(row.finalizing_at),
        "completed_at": ts(row.completed_at),
        "failed_at": ts(row.failed_at),
        "expired_at": ts(row.expired_at),
        "cancelling_at": ts(row.cancelling_at),
        "cancelled_at": ts(row.cancelled_at),
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": row.metadata_,
    }


class Batches:
    def __init__(self, engine: Engine, files: FileStore) -> None:
        self.engine = engine
        self.files = files

    def create(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None = None,
        viewer: Principal | None = None,
    ) -> BatchRow:
        if not known_endpoint(endpoint):
            raise InvalidRequest(
                f"endpoint must be one of {ENDPOINT_NAMES}, not {endpoint!r}.",
                param="endpoint",
            )
        window = window_seconds(completion_window)
        stored = self.files.get_visible(input_file_id, viewer)
        if stored.purpose != "batch":
            raise InvalidRequest(
                f"File {input_file_id} has purpose {stored.purpose!r}, not 'batch'.",
                param="input_file_id",
            )
        if metadata is not None and (
            len(metadata) > 16 or any(len(k) > 64 or len(str(v)) > 512 for k, v in metadata.items())
        ):
            raise InvalidRequest(
                "metadata holds at most 16 pairs; keys up to 64 characters, values up to 512.",
                param="metadata",
            )
        now = time.time()
        row = BatchRow(
            id="batch_" + uuid.uuid4().hex[:24],
            endpoint=endpoint,
            input_file_id=input_file_id,
            model=None,
            completion_window=completion_window,
            status="validating",
            output_file_id=None,
            error_file_id=None,
            errors=None,
            metadata_=metadata,
            total=stored.lines,
            completed=0,
            failed=0,
            created_at=now,
            expires_at=now + window,
            owner=viewer.key_id if viewer is not None else None,
        )
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(row)
        return row

    def get(self, batch_id: str) -> BatchRow:
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(BatchRow, batch_id)
        if row is None:
            raise BatchNotFound(batch_id)
        return row

    def get_visible(self, batch_id: str, viewer: Principal | None) -> BatchRow:
        """The batch, if ``viewer``'s key may see it; another key's batch is a 404."""
        row = self.get(batch_id)
        if not sees(viewer, row.owner):
            raise BatchNotFound(batch_id)
        return row

    def list(
        self, limit: int = 20, after: str | None = None, viewer: Principal | None = None
    ) -> tuple[builtins.list[BatchRow], bool]:
        """Newest first, OpenAI's cursor pagination: (page, has_more)."""
        anchor = self.get_visible(after, viewer) if after else None
        where = visible_to(BatchRow, viewer)
        return newest_first(self.engine, BatchRow, after=anchor, limit=limit, where=where)

    def finished_over_time(
        self, batch_id: str, buckets: int = 60
    ) -> dict[str, builtins.list[float]]:
        """Lines finished per second (ok, failed), from the first to the last, in at most
        ``buckets`` intervals of whole seconds: the dashboard's chart of a batch. Lines
        are finished in groups with one time each, so this reads one row per group.
        Lines a restart recovered from the journal have no time and are not counted."""
        at = BatchDoneRow.done_at
        with Session(self.engine) as session:
            groups = session.execute(
                select(at, BatchDoneRow.ok, func.count())
                .where(BatchDoneRow.batch_id == batch_id, at.is_not(None))
                .group_by(at, BatchDoneRow.ok)
            ).all()
        timed = [(float(when), bool(good), int(n)) for when, good, n in groups if when is not None]
        if not timed:
            return {"t": [], "ok": [], "failed": []}
        first = min(g[0] for g in timed)
        last = max(g[0] for g in timed)
        step = float(int((last - first) / buckets) + 1)
        count = int((last - first) // step) + 1
        ok, failed = [0.0] * count, [0.0] * count
        for when, good, n in timed:
            (ok if good else failed)[int((when - first) // step)] += n / step
        return {"t": [first + i * step for i in range(count)], "ok": ok, "failed": failed}

    def active(self) -> builtins.list[BatchRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(
                session.scalars(
                    select(BatchRow)
                    .where(BatchRow.status.in_(ACTIVE))
                    .order_by(BatchRow.created_at)
                )
            )

    def cancel(self, batch_id: str) -> BatchRow:
        """Ask the runner to stop: no new request starts; results so far are kept."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(BatchRow, batch_id)
            if row is None:
                raise BatchNotFound(batch_id)
            if row.status in ("validating", "in_progress"):
                row.status, row.cancelling_at = "cancelling", time.time()
            elif row.status in TERMINAL and row.status != "cancelled":
                raise InvalidRequest(
                    f"Batch {batch_id} is {row.status}; only a running batch can be cancelled.",
                    param="batch_id",
                )
        return row

    def update(self, batch_id: str, **values: Any) -> BatchRow:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(BatchRow, batch_id)
            if row is None:
                raise BatchNotFound(batch_id)
            for key, value in values.items():
                setattr(row, key, value)
        return row
