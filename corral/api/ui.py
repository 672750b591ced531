"""The web dashboard at ``/ui``: server-rendered pages, live over SSE.

No second server and no Node.js at install time: the pages are Jinja2 templates
rendered here (``templates/ui``), made live with htmx and its SSE extension, whose
files are committed under ``static/ui`` with their licences (``ui/build.sh`` copies
them from the pinned npm packages). docs/dashboard.md says why this stack.

Every change a page makes goes through the same admin API the CLI uses, from the
browser, with the admin key the dashboard keeps in a cookie (HttpOnly, so no script
can read it; SameSite=Strict, so no other site's page sends it) and its own header on
changes (see ``auth.ui_key``). When no key exists the dashboard is open, as the API is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from corral.api.auth import UI_COOKIE, UI_HEADER
from corral.api.services import Services, services_of
from corral.batch.batches import batch_object
from corral.errors import CorralError
from corral.registry.records import Capability, capability_names
from corral.units import format_size

PREFIX = "/ui"
LIVE_SECONDS = 1.0  # how often the live pages are sent again
COOKIE_SECONDS = 12 * 3600


def _templates() -> Environment:
    directory = resources.files("corral.api").joinpath("templates/ui")
    env = Environment(
        loader=FileSystemLoader(str(directory)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = lambda n: format_size(n) if n else "-"
    env.filters["when"] = _when
    env.globals.update(prefix=PREFIX, ui_header=UI_HEADER)
    return env


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


TEMPLATES = _templates()


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status)


def _signed_in(request: Request) -> bool:
    """May this browser see the dashboard? Open while no key exists; then only with an
    admin key in the dashboard's cookie."""
    keys = services_of(request).keys
    if not keys.any():
        return True
    secret = request.cookies.get(UI_COOKIE, "")
    if not secret:
        return False
    try:
        return keys.authenticate(secret).admin
    except CorralError:
        return False


def page(name: str, **context: Any) -> Any:
    """A route for a page that needs the dashboard's sign-in."""

    async def endpoint(request: Request) -> Response:
        if not _signed_in(request):
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        builder = context.get("build")
        extra = await builder(request) if builder is not None else {}
        keyed = services_of(request).keys.any()
        return render(name, keyed=keyed, active=context.get("active"), **extra)

    return endpoint


# --- sign-in ---------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    if not services_of(request).keys.any():
        return RedirectResponse(f"{PREFIX}/models", status_code=303)
    return render("login.html", error=None)


async def login(request: Request) -> Response:
    form = await request.form()
    secret = str(form.get("key", "")).strip()
    keys = services_of(request).keys
    error = None
    try:
        principal = keys.authenticate(secret) if secret else None
    except CorralError as exc:
        principal, error = None, exc.message
    if principal is None or not principal.admin:
        if principal is not None:
            error = f"The key '{principal.name}' has the inference scope; an admin key is needed."
        # The form again, with why (a page, not an API answer: 200, as sign-in pages do).
        return render("login.html", error=error or "Enter an admin API key.")
    response = RedirectResponse(f"{PREFIX}/models", status_code=303)
    response.set_cookie(
        UI_COOKIE,
        secret,
        max_age=COOKIE_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(UI_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# --- models ------------------------------------------------------------------------------


def _model_rows(services: Services) -> list[dict[str, Any]]:
    rows = []
    for record in services.registry.list():
        described = services.catalog.describe(record)
        rows.append({**described, "engine_name": described["runs_on"] or "-"})
    return rows


def _filtered(rows: Iterable[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
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
        out.append(row)
    return out


async def _models_context(request: Request) -> dict[str, Any]:
    services = services_of(request)
    rows = await asyncio.to_thread(_model_rows, services)
    query = dict(request.query_params)
    return {
        "rows": _filtered(rows, query),
        "query": query,
        "formats": sorted({r["format"] for r in rows}),
        "engines": sorted({r["engine_name"] for r in rows}),
        "capabilities": capability_names(Capability(c) for r in rows for c in r["capabilities"]),
    }


async def models_table(request: Request) -> Response:
    if not _signed_in(request):
        return Response(status_code=401)
    context = await _models_context(request)
    return render("models_table.html", **context)


async def _model_context(request: Request) -> dict[str, Any]:
    services = services_of(request)
    record = await asyncio.to_thread(services.registry.get, request.path_params["name"])
    described = services.catalog.describe(record)
    versions = await asyncio.to_thread(services.registry.versions, record.name)
    return {"model": described, "versions": versions}


# --- workers -----------------------------------------------------------------------------


def _workers_context(services: Services) -> dict[str, Any]:
    snapshot = services.scheduler.snapshot()
    loaded = [m for m in snapshot if m.state not in ("stopped",)]
    estimated = sum(m.memory.estimated for m in loaded if m.state != "failed")
    actual = sum(m.memory.actual or 0 for m in loaded)
    return {
        "models": loaded,
        "budget": services.scheduler.budgets(),
        "estimated": estimated,
        "actual": actual,
        "now": datetime.now(UTC).strftime("%H:%M:%S"),
    }


async def _workers_page_context(request: Request) -> dict[str, Any]:
    return _workers_context(services_of(request))


async def workers_events(request: Request) -> Response:
    """The workers table, sent again every second as an SSE event (``workers``)."""
    return await _live(request, "workers_table.html", "workers", _workers_context)


async def _live(
    request: Request,
    template_name: str,
    event: str,
    context: Callable[[Services], dict[str, Any]],
) -> Response:
    """A fragment rendered again every ``LIVE_SECONDS`` as one SSE event, until the
    browser leaves; htmx's SSE extension swaps it into the page."""
    if not _signed_in(request):
        return Response(status_code=401)
    services = services_of(request)
    template = TEMPLATES.get_template(template_name)

    async def events() -> AsyncIterator[bytes]:
        while not await request.is_disconnected():
            values = await asyncio.to_thread(context, services)
            html = template.render(prefix=PREFIX, **values)
            data = "\n".join(f"data: {line}" for line in html.splitlines() or [""])
            yield f"event: {event}\n{data}\n\n".encode()
            await asyncio.sleep(LIVE_SECONDS)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# --- batches -----------------------------------------------------------------------------


def _batches_context(services: Services) -> dict[str, Any]:
    rows, _ = services.batches.list(50)
    now = time.time()
    batches = []
    for row in rows:
        b = batch_object(row)
        counts = b["request_counts"]
        done = counts["completed"] + counts["failed"]
        total = counts["total"] or 0
        started = b["in_progress_at"]
        elapsed = (b["completed_at"] or now) - started if started else 0
        rate = done / elapsed if elapsed > 0 and done else 0.0
        left = (total - done) / rate if rate and b["status"] == "in_progress" else None
        batches.append(
            {
                **b,
                "done": done,
                "percent": 100.0 * done / total if total else 0.0,
                "rate": rate,
                "eta": left,
            }
        )
    return {"batches": batches, "now": datetime.now(UTC).strftime("%H:%M:%S")}


async def _batches_page_context(request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(_batches_context, services_of(request))


async def batches_events(request: Request) -> Response:
    """The batches table every second, as an SSE event (``batches``)."""
    return await _live(request, "batches_table.html", "batches", _batches_context)


async def home(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/models", status_code=303)


def _static() -> StaticFiles:
    return StaticFiles(directory=str(resources.files("corral.api").joinpath("static/ui")))


def routes() -> list[BaseRoute]:
    return [
        Route(PREFIX, home, methods=["GET"]),
        Route(f"{PREFIX}/login", login_form, methods=["GET"]),
        Route(f"{PREFIX}/login", login, methods=["POST"]),
        Route(f"{PREFIX}/logout", logout, methods=["POST"]),
        Route(
            f"{PREFIX}/models",
            page("models.html", build=_models_context, active="models"),
            methods=["GET"],
        ),
        Route(f"{PREFIX}/models-table", models_table, methods=["GET"]),
        Route(
            f"{PREFIX}/models/{{name:path}}",
            page("model.html", build=_model_context, active="models"),
            methods=["GET"],
        ),
        Route(
            f"{PREFIX}/workers",
            page("workers.html", build=_workers_page_context, active="workers"),
            methods=["GET"],
        ),
        Route(f"{PREFIX}/events/workers", workers_events, methods=["GET"]),
        Route(
            f"{PREFIX}/batches",
            page("batches.html", build=_batches_page_context, active="batches"),
            methods=["GET"],
        ),
        Route(f"{PREFIX}/events/batches", batches_events, methods=["GET"]),
        Mount(f"{PREFIX}/static", app=_static(), name="ui-static"),
    ]
