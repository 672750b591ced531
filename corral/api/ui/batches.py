"""Batches: progress, rate and ETA of each (live), and one batch's requests over time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request

from corral.api.services import Services, services_of
from corral.api.ui.render import Query, clock
from corral.api.ui.svg import Chart, svg
from corral.batch.batches import batch_object


def progress(row: Any, now: float) -> dict[str, Any]:
    b = batch_object(row)
    counts = b["request_counts"]
    done = counts["completed"] + counts["failed"]
    total = counts["total"] or 0
    started = b["in_progress_at"]
    elapsed = (b["completed_at"] or now) - started if started else 0
    rate = done / elapsed if elapsed > 0 and done else 0.0
    left = (total - done) / rate if rate and b["status"] == "in_progress" else None
    return {
        **b,
        "done": done,
        "percent": 100.0 * done / total if total else 0.0,
        "rate": rate,
        "eta": left,
    }


def batches_context(services: Services, query: Query | None = None) -> dict[str, Any]:
    """The live table's context (it takes no query parameters)."""
    rows, _ = services.batches.list(50)
    now = time.time()
    return {"batches": [progress(row, now) for row in rows], "now": clock()}


async def batches_page_context(request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(batches_context, services_of(request))


def batch_context_of(services: Services, batch_id: str) -> dict[str, Any]:
    row = services.batches.get(batch_id)
    series = services.batches.finished_over_time(batch_id)
    chart = Chart(
        "Requests finished per second",
        "req/s",
        series["t"],
        {"ok": series["ok"], "failed": series["failed"]},
    )
    return {"batch": progress(row, time.time()), "chart": svg(chart), "now": clock()}


async def batch_context(request: Request) -> dict[str, Any]:
    services = services_of(request)
    return await asyncio.to_thread(batch_context_of, services, request.path_params["id"])
