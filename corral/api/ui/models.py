"""The Models pages: the catalogue with its filters, one model's facts, and pulls with
live progress. Pulls and uploads go through the admin API (``/admin/pulls``,
``/admin/uploads/``) from the browser; the page only shows them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from corral.api.services import Services, services_of
from corral.api.ui.render import PREFIX, TEMPLATES
from corral.registry.records import Capability, capability_names

PULLS_SHOWN = 10


def model_rows(services: Services) -> list[dict[str, Any]]:
    rows = []
    for record in services.registry.list():
        described = services.catalog.describe(record)
        rows.append({**described, "engine_name": described["runs_on"] or "-"})
    return rows


def tag_of(name: str) -> str:
    return name.rpartition(":")[2]


def filtered(rows: Iterable[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
    text = query.get("q", "").strip().lower()
    out = []
    for row in rows:
        if text and text not in row["name"].lower() and text not in " ".join(row["aliases"]):
            continue
        if query.get("format") and row["format"] != query["format"]:
            continue
        if query.get("engine") and row["engine_name"] != query["engine"]:
            continue
        if query.get("capability") and query["capability"] not in row["capabilities"]:
            continue
        if query.get("tag") and tag_of(row["name"]) != query["tag"]:
            continue
        out.append(row)
    return out


async def models_context(request: Request) -> dict[str, Any]:
    services = services_of(request)
    rows = await asyncio.to_thread(model_rows, services)
    query = dict(request.query_params)
    return {
        "rows": filtered(rows, query),
        "query": query,
        "formats": sorted({r["format"] for r in rows}),
        "engines": sorted({r["engine_name"] for r in rows}),
        "capabilities": capability_names(Capability(c) for r in rows for c in r["capabilities"]),
        "tags": sorted({tag_of(r["name"]) for r in rows}),
        **pulls_context(services),
    }


async def model_context(request: Request) -> dict[str, Any]:
    services = services_of(request)
    record = await asyncio.to_thread(services.registry.get, request.path_params["name"])
    described = services.catalog.describe(record)
    versions = await asyncio.to_thread(services.registry.versions, record.name)
    return {"model": described, "versions": versions}


def pulls_context(services: Services) -> dict[str, Any]:
    pulls = []
    for job in services.pulls.list(PULLS_SHOWN):
        row = job.to_dict()
        total = row["bytes_total"]
        done = row["state"] == "completed"
        row["percent"] = 100.0 if done else 100.0 * row["bytes_done"] / total if total else 0.0
        pulls.append(row)
    return {"pulls": pulls}


def pull_events(query: dict[str, str]) -> PullStream:
    """A fresh event source per browser: each remembers which pulls it saw finish."""
    return PullStream()


class PullStream:
    """The pulls table every second (``pulls``), and ``models-changed`` when a pull has
    finished since the last one, so the catalogue shows the new model at once."""

    def __init__(self) -> None:
        self.template = TEMPLATES.get_template("pulls_table.html")
        self.finished: set[str] | None = None

    def __call__(self, services: Services) -> list[tuple[str, str]]:
        context = pulls_context(services)
        events = [("pulls", self.template.render(prefix=PREFIX, **context))]
        finished = {p["id"] for p in context["pulls"] if p["state"] == "completed"}
        if self.finished is not None and finished - self.finished:
            events.append(("models-changed", ""))
        self.finished = finished
        return events
