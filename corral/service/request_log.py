"""The request log: one row per HTTP request, in the registry database.

Who (key id, client address, the client's own ``user`` and ``metadata``), what (method,
route, model, status), how much (prompt and completion tokens) and how long (time to
first token, duration). Never the prompt or the answer, unless ``log_prompts`` is on;
then the request's body and the answer's (up to 64 KiB each, API key secrets cut out)
are kept too. Admin actions (pulls, deletes, key changes) are requests like any other,
so they are logged with the key that made them.

Rows are buffered and written in one transaction every second, off the event loop;
the oldest are pruned by age (``request_log_days``) and count
(``request_log_max_rows``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Engine, Float, Integer, String, Text, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from corral.registry.db import Base

MAX_PROMPT_BYTES = 64 << 10
PRUNE_EVERY_SECONDS = 60.0


class RequestLogRow(Base):
    __tablename__ = "request_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)  # when the request arrived
    key_id: Mapped[str | None] = mapped_column(String(64), index=True)
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(256))  # the route's template, e.g. /v1/files/{id}
    model: Mapped[str | None] = mapped_column(String(256), index=True)
    status: Mapped[int] = mapped_column(Integer, index=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float)
    client: Mapped[str | None] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(256))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    prompt: Mapped[str | None] = mapped_column(Text)  # the request body; log_prompts only
    output: Mapped[str | None] = mapped_column(Text)  # the answer's body; log_prompts only


@dataclass(frozen=True)
class LogQuery:
    model: str | None = None
    key_id: str | None = None
    since: float | None = None  # epoch seconds
    status_class: int | None = None  # 2, 4 or 5: 2xx, 4xx, 5xx
    after_id: int = 0  # rows newer than this id (following the log)
    limit: int = 100


class RequestLog:
    def __init__(self, engine: Engine, max_age_days: float, max_rows: int) -> None:
        self.engine = engine
        self.max_age = max_age_days * 86400.0
        self.max_rows = max_rows
        self._pending: deque[RequestLogRow] = deque()
        self._lock = threading.Lock()
        self._pruned_at = 0.0

    def add(self, row: RequestLogRow) -> None:
        """Queue a row (cheap: the event loop calls this at the end of each request)."""
        if row.prompt is not None and len(row.prompt) > MAX_PROMPT_BYTES:
            row.prompt = row.prompt[:MAX_PROMPT_BYTES]
        if row.output is not None and len(row.output) > MAX_PROMPT_BYTES:
            row.output = row.output[:MAX_PROMPT_BYTES]
        self._pending.append(row)

    def flush(self) -> None:
        """Write what is queued, and prune now and then (in a thread)."""
        with self._lock:
            rows = []
            while self._pending:
                rows.append(self._pending.popleft())
            if rows:
                with Session(self.engine) as session, session.begin():
                    session.add_all(rows)
            now = time.time()
            if now - self._pruned_at >= PRUNE_EVERY_SECONDS:
                self._pruned_at = now
                self._prune(now)

    def _prune(self, now: float) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(delete(RequestLogRow).where(RequestLogRow.at < now - self.max_age))
            newest = session.scalar(select(func.max(RequestLogRow.id)))
            if newest is not None and newest > self.max_rows:
                session.execute(
                    delete(RequestLogRow).where(RequestLogRow.id <= newest - self.max_rows)
                )

    def query(self, q: LogQuery) -> Sequence[RequestLogRow]:
        """Matching rows, oldest first, after ``q.after_id``; the last ``limit`` of them
        on a first call (``after_id`` 0), the next ``limit`` when following."""
        query = select(RequestLogRow).where(RequestLogRow.id > q.after_id)
        if q.model is not None:
            query = query.where(RequestLogRow.model == q.model)
        if q.key_id is not None:
            query = query.where(RequestLogRow.key_id == q.key_id)
        if q.since is not None:
            query = query.where(RequestLogRow.at >= q.since)
        if q.status_class is not None:
            low = q.status_class * 100
            query = query.where(RequestLogRow.status >= low, RequestLogRow.status < low + 100)
        with Session(self.engine, expire_on_commit=False) as session:
            if q.after_id == 0:
                newest = query.order_by(RequestLogRow.id.desc()).limit(q.limit)
                return list(reversed(list(session.scalars(newest))))
            return list(session.scalars(query.order_by(RequestLogRow.id).limit(q.limit)))


def row_object(row: RequestLogRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "key_id": row.key_id,
        "method": row.method,
        "route": row.route,
        "model": row.model,
        "status": row.status,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "ttft_ms": row.ttft_ms,
        "duration_ms": row.duration_ms,
        "client": row.client,
        "user": row.user,
        "metadata": row.metadata_,
        **({"prompt": row.prompt} if row.prompt is not None else {}),
        **({"output": row.output} if row.output is not None else {}),
    }
