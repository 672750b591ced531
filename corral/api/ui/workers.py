"""Workers and memory: what each loaded model holds (estimated and measured, RAM and
GPU) against the budget, its slots, queue and keep-alive, and its crashes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from corral.api.services import Services, services_of
from corral.api.ui.render import Query, clock


def workers_context(services: Services, query: Query | None = None) -> dict[str, Any]:
    """The live table's context (it takes no query parameters)."""
    snapshot = services.scheduler.snapshot()
    loaded = [m for m in snapshot if m.state not in ("stopped",)]
    estimated = sum(m.memory.estimated for m in loaded if m.state != "failed")
    actual = sum(m.memory.actual or 0 for m in loaded)
    return {
        "models": loaded,
        "budget": services.scheduler.budgets(),
        "estimated": estimated,
        "actual": actual,
        "now": clock(),
    }


async def workers_page_context(request: Request) -> dict[str, Any]:
    return workers_context(services_of(request))
