"""What every dashboard page shares: the templates, the sign-in check, and live fragments.

No second server and no Node.js at install time: the pages are Jinja2 templates
rendered here (``templates/ui``), made live with htmx and its SSE extension, whose
files are committed under ``static/ui`` with their licences (``ui/build.sh`` copies
them from the pinned npm packages). docs/dashboard.md says why this stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from corral.api.auth import UI_COOKIE, UI_HEADER
from corral.api.services import Services, services_of
from corral.errors import CorralError
from corral.units import format_size

PREFIX = "/ui"
LIVE_SECONDS = 1.0  # how often the live tables are sent again

Builder = Callable[[Request], Awaitable[dict[str, Any]]]
Query = dict[str, str]
Live = Callable[[Services, Query], dict[str, Any]]  # a live fragment's context


def _templates() -> Environment:
    directory = resources.files("corral.api").joinpath("templates/ui")
    env = Environment(
        loader=FileSystemLoader(str(directory)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = lambda n: format_size(int(n)) if n else "-"
    env.filters["when"] = when
    env.globals.update(prefix=PREFIX, ui_header=UI_HEADER)
    return env


def when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


TEMPLATES = _templates()


def render(template: str, /, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**context))


def signed_in(request: Request) -> bool:
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


def page(name: str, build: Builder | None = None, active: str | None = None) -> Any:
    """A route for a page that needs the dashboard's sign-in."""

    async def endpoint(request: Request) -> Response:
        if not signed_in(request):
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        extra = await build(request) if build is not None else {}
        keyed = services_of(request).keys.any()
        return render(name, keyed=keyed, active=active, **extra)

    return endpoint


def fragment(name: str, build: Builder) -> Any:
    """A route for a piece of a page that htmx swaps in (401 when signed out)."""

    async def endpoint(request: Request) -> Response:
        if not signed_in(request):
            return Response(status_code=401)
        return render(name, **await build(request))

    return endpoint


def sse_event(event: str, html: str) -> bytes:
    data = "\n".join(f"data: {line}" for line in html.splitlines() or [""])
    return f"event: {event}\n{data}\n\n".encode()


def live(
    template_name: str,
    event: str,
    context: Live,
    every: float = LIVE_SECONDS,
) -> Callable[[Request], Awaitable[Response]]:
    """A route sending a fragment rendered again every ``every`` seconds as one SSE
    event, until the browser leaves; htmx's SSE extension swaps it into the page.
    ``context`` gets the services and the stream's query parameters."""
    template = TEMPLATES.get_template(template_name)

    def source(params: Query) -> EventSource:
        def events(services: Services) -> list[tuple[str, str]]:
            return [(event, template.render(prefix=PREFIX, **context(services, params)))]

        return events

    return live_events(source, every)


EventSource = Callable[[Services], list[tuple[str, str]]]


def live_events(
    source: Callable[[Query], EventSource], every: float = LIVE_SECONDS
) -> Callable[[Request], Awaitable[Response]]:
    """Like ``live``, for a stream of several kinds of events: ``source(query)`` makes,
    for each browser, a function returning (event, html) pairs each time (run in a
    thread: they read the database)."""

    async def endpoint(request: Request) -> Response:
        if not signed_in(request):
            return Response(status_code=401)
        services = services_of(request)
        events = source(dict(request.query_params))

        async def stream() -> AsyncIterator[bytes]:
            while not await request.is_disconnected():
                for event, html in await asyncio.to_thread(events, services):
                    yield sse_event(event, html)
                await asyncio.sleep(every)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return endpoint
