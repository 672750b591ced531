"""The last hour, charted: tokens/s, time to first token and inter-token latency
percentiles, requests by status, queue wait and memory, from the gateway's own ring
buffer (``service.timeline``) or a Prometheus server that scrapes it
(``CORRAL_PROMETHEUS_URL``), redrawn every few seconds over SSE."""

from __future__ import annotations

import asyncio
from typing import Any

from markupsafe import Markup
from starlette.requests import Request

from corral.api.services import Services, services_of
from corral.api.ui import prometheus
from corral.api.ui.render import clock
from corral.api.ui.svg import Chart, svg

CHART_SECONDS = 5.0  # how often the charts are sent again (a bucket is 10 s)


def _percentiles(series: dict[str, Any], kind: str) -> dict[str, list[float | None]]:
    return {f"p{q}": series[f"{kind}_p{q}"] for q in (50, 95, 99)}


def charts_of(series: dict[str, Any]) -> list[Markup]:
    t = series["t"]
    memory = {
        {"rss": "measured RSS", "estimated": "estimated", "budget": "budget"}.get(k, k): v
        for k, v in series["memory"].items()
        if not k.startswith("vram")
    }
    charts = [
        Chart(
            "Tokens per second",
            "tok/s",
            t,
            {"completion": series["tokens_per_s"], "prompt": series["prompt_tokens_per_s"]},
        ),
        Chart("Requests by status (per 10 s)", "", t, series["requests"] or {"2xx": [0] * len(t)}),
        Chart("Time to first token", "s", t, _percentiles(series, "ttft")),
        Chart("Inter-token latency", "s", t, _percentiles(series, "itl")),
        Chart("Queue wait", "s", t, _percentiles(series, "queue")),
        Chart("Memory (RAM)", "B", t, memory),
    ]
    vram = {k: v for k, v in series["memory"].items() if k.startswith("vram")}
    if vram:
        charts.append(Chart("GPU memory", "B", t, vram))
    return [svg(c) for c in charts]


WINDOWS = {"5m": 300, "15m": 900, "1h": 3600}  # what the page offers


def window_of(query: dict[str, str]) -> str:
    return query.get("window", "1h") if query.get("window") in WINDOWS else "1h"


def charts_context(services: Services, query: dict[str, str]) -> dict[str, Any]:
    """The charts, from Prometheus when one is configured (and answers), else from the
    gateway's own ring buffer; ``source`` says which, and why if not the one asked."""
    window = window_of(query)
    seconds = WINDOWS[window]
    url = services.settings.prometheus_url
    source = "the gateway's own ring buffer (10-second intervals, kept for an hour)"
    series = None
    if url:
        try:
            series = prometheus.series(url, seconds)
            source = f"Prometheus at {url}"
        except prometheus.PrometheusError as exc:
            source = f"{source}: Prometheus did not answer ({exc})"
    if series is None:
        series = services.timeline.series(seconds=seconds)
    total = sum(sum(v) for v in series["requests"].values())
    return {
        "charts": charts_of(series),
        "requests": round(total),
        "source": source,
        "from_prometheus": source.startswith("Prometheus"),
        "window": window,
        "windows": list(WINDOWS),
        "now": clock(),
    }


async def charts_page_context(request: Request) -> dict[str, Any]:
    query = dict(request.query_params)
    return await asyncio.to_thread(charts_context, services_of(request), query)
