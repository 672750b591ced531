"""OpenAI's list pagination (newest first, ``after`` a cursor id), in the database.

Files and batches page the same way: by creation time, ties broken by id, the page
read with one extra row to tell ``has_more``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from corral.batch.tables import BatchRow, StoredFileRow
from corral.keys.store import Principal

Row = TypeVar("Row", StoredFileRow, BatchRow)


def newest_first(
    engine: Engine, model: type[Row], *, after: Row | None, limit: int, where: Any = None
) -> tuple[list[Row], bool]:
    """The ``limit`` rows after ``after`` (or the newest), and whether more follow."""
    query = select(model).order_by(model.created_at.desc(), model.id.desc())
    for clause in where if isinstance(where, list | tuple) else [where]:
        if clause is not None:
            query = query.where(clause)
    if after is not None:
        query = query.where(
            (model.created_at < after.created_at)
            | ((model.created_at == after.created_at) & (model.id < after.id))
        )
    with Session(engine, expire_on_commit=False) as session:
        rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def visible_to(model: type[Row], viewer: Principal | None) -> Any:
    """The SQL form of ``keys.store.sees``: None when everything is visible."""
    if viewer is None:
        return None
    if viewer.admin:
        return (model.owner == viewer.key_id) | model.owner.is_(None)
    return model.owner == viewer.key_id


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list envelope around one page of objects."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
