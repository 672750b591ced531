"""Benchmark history: each ``corral bench`` run, kept with the model it measured.

A run is stored under the exact version it measured (name and file hash) with the
machine it ran on, so ``corral bench --compare 1 2`` compares like with like, and a
figure from another machine is never mistaken for this one's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.registry.db import BenchmarkRow
from corral.registry.names import canonical_or_not_found
from corral.registry.records import ModelRecord
from corral.registry.store import Registry

HISTORY_LIMIT = 100


def save_benchmark(
    registry: Registry,
    record: ModelRecord,
    *,
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Keep one run's results for ``record``; the stored run."""
    row = BenchmarkRow(
        model=record.name,
        sha256=record.sha256,
        created_at=time.time(),
        machine=dict(machine),
        settings=dict(settings),
        results={"rows": [dict(r) for r in results]},
    )
    with Session(registry.engine, expire_on_commit=False) as session, session.begin():
        session.add(row)
    return _as_dict(row)


def benchmark_history(
    registry: Registry, name: str, limit: int = HISTORY_LIMIT
) -> list[dict[str, Any]]:
    """Runs of ``name``, newest first: of that version when it names one (``iris:2``),
    of every version when it is bare (``iris``), removed versions' runs included."""
    given = name.strip()
    canonical = canonical_or_not_found(given)
    query = select(BenchmarkRow)
    if ":" in given:
        query = query.where(BenchmarkRow.model == canonical)
    else:
        base = canonical.rpartition(":")[0]
        query = query.where(BenchmarkRow.model.startswith(f"{base}:", autoescape=True))
    query = query.order_by(BenchmarkRow.created_at.desc(), BenchmarkRow.id.desc()).limit(limit)
    with Session(registry.engine, expire_on_commit=False) as session:
        return [_as_dict(row) for row in session.scalars(query)]


def _as_dict(row: BenchmarkRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": row.model,
        "sha256": row.sha256,
        "created_at": row.created_at,
        "machine": row.machine,
        "settings": row.settings,
        "results": row.results.get("rows", []),
    }
