"""The web dashboard at ``/ui``: server-rendered pages, live over SSE.

One module per page (``models``, ``workers``, ``batches``, ``charts``,
``benchmarks``, ``playground``), what they share in ``render``, sign-in in
``session``, charts drawn as SVG by ``svg``. Every change a page makes goes through
the same admin API the CLI uses, from the browser, with the admin key the dashboard
keeps in a cookie; docs/dashboard.md says why this stack and how it is kept safe.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from corral.api.ui import session
from corral.api.ui.batches import batch_context, batches_context, batches_page_context
from corral.api.ui.benchmarks import benchmarks_context, model_benchmarks_context
from corral.api.ui.charts import CHART_SECONDS, charts_context, charts_page_context
from corral.api.ui.models import model_context, models_context, pull_events
from corral.api.ui.playground import playground_context
from corral.api.ui.render import PREFIX, fragment, live, live_events, page
from corral.api.ui.workers import workers_context, workers_page_context


async def home(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/models", status_code=303)


def _static() -> StaticFiles:
    return StaticFiles(directory=str(resources.files("corral.api").joinpath("static/ui")))


def _get(path: str, endpoint: object) -> Route:
    return Route(PREFIX + path, endpoint, methods=["GET"])  # type: ignore[arg-type]


def routes() -> list[BaseRoute]:
    return [
        Route(PREFIX, home, methods=["GET"]),
        _get("/login", session.login_form),
        Route(f"{PREFIX}/login", session.login, methods=["POST"]),
        Route(f"{PREFIX}/logout", session.logout, methods=["POST"]),
        _get("/models", page("models.html", models_context, "models")),
        _get("/models-table", fragment("models_table.html", models_context)),
        _get("/models/{name:path}", page("model.html", model_context, "models")),
        _get("/events/pulls", live_events(pull_events)),
        _get("/workers", page("workers.html", workers_page_context, "workers")),
        _get("/events/workers", live("workers_table.html", "workers", workers_context)),
        _get("/batches", page("batches.html", batches_page_context, "batches")),
        _get("/batches/{id}", page("batch.html", batch_context, "batches")),
        _get("/events/batches", live("batches_table.html", "batches", batches_context)),
        _get("/charts", page("charts.html", charts_page_context, "charts")),
        _get("/events/charts", live("charts_body.html", "charts", charts_context, CHART_SECONDS)),
        _get("/benchmarks", page("benchmarks.html", benchmarks_context, "benchmarks")),
        _get(
            "/benchmarks/{name:path}",
            page("benchmark.html", model_benchmarks_context, "benchmarks"),
        ),
        _get("/playground", page("playground.html", playground_context, "playground")),
        Mount(f"{PREFIX}/static", app=_static(), name="ui-static"),
    ]
