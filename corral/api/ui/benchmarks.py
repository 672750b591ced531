"""Benchmarks of tensor models (``corral bench``'s stored runs): each model's history
by version, latency and throughput charts, and two runs side by side."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from corral.api.services import Services, services_of
from corral.api.ui.svg import Chart, svg
from corral.registry.benchmarks import benchmark_history
from corral.registry.records import Capability


def _served(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in run["results"] if r["path"] == "server" and r["requests"]]


def summary(run: dict[str, Any]) -> dict[str, Any]:
    served = _served(run)
    machine = run["machine"]
    return {
        **run,
        "best_rows_per_s": max((r["rows_per_s"] for r in served), default=0.0),
        "best_p50_ms": min((r["p50_ms"] for r in served), default=0.0),
        "machine_text": f"{machine.get('cpu', '?')} x{machine.get('logical_cores', '?')}",
    }


def benchmarked_models(services: Services) -> list[dict[str, Any]]:
    """Every tensor model base name with its runs (all versions), newest run first."""
    bases: dict[str, list[str]] = {}
    for record in services.registry.list():
        if Capability.TENSOR in services.catalog.capabilities(record):
            bases.setdefault(record.name.rpartition(":")[0], []).append(record.name)
    out = []
    for base in sorted(bases):
        runs = [summary(r) for r in benchmark_history(services.registry, base)]
        out.append({"base": base, "versions": sorted(bases[base]), "runs": runs})
    return out


async def benchmarks_context(request: Request) -> dict[str, Any]:
    models = await asyncio.to_thread(benchmarked_models, services_of(request))
    return {"models": models}


def comparison(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Measurement by measurement (path, batch, clients): the second run over the first."""
    theirs = {(r["path"], r["batch_size"], r["concurrency"]): r for r in second["results"]}
    rows = []
    for a in first["results"]:
        b = theirs.get((a["path"], a["batch_size"], a["concurrency"]))
        if b is None:
            continue
        speed = b["rows_per_s"] / a["rows_per_s"] if a["rows_per_s"] else None
        rows.append({"a": a, "b": b, "speed": speed})
    return rows


def history_charts(runs: list[dict[str, Any]]) -> list[Any]:
    """Best throughput and latency of each run over time, a line per version; and the
    newest run's throughput by clients, a line per batch size."""
    ordered = sorted(runs, key=lambda r: r["created_at"])
    times = [r["created_at"] for r in ordered]
    versions = sorted({r["model"] for r in ordered})

    def per_version(key: str) -> dict[str, list[float | None]]:
        return {v: [r[key] if r["model"] == v else None for r in ordered] for v in versions}

    charts = [
        Chart("Best rows/s by run", "rows/s", times, per_version("best_rows_per_s")),
        Chart("Best p50 latency by run", "ms", times, per_version("best_p50_ms")),
    ]
    if ordered:
        newest = _served(ordered[-1])
        clients = sorted({r["concurrency"] for r in newest})
        by_batch: dict[str, list[float | None]] = {}
        for size in sorted({r["batch_size"] for r in newest}):
            cells = {r["concurrency"]: r["rows_per_s"] for r in newest if r["batch_size"] == size}
            by_batch[f"batch {size}"] = [cells.get(c) for c in clients]
        charts.append(
            Chart(
                f"Rows/s by clients, run {ordered[-1]['id']} ({ordered[-1]['model']})",
                "rows/s",
                [float(c) for c in clients],
                by_batch,
                x_is_time=False,
            )
        )
    return [svg(c) for c in charts]


def model_benchmarks(services: Services, name: str, query: dict[str, str]) -> dict[str, Any]:
    runs = [summary(r) for r in benchmark_history(services.registry, name)]
    if not runs:
        services.registry.get(name)  # an unknown model is a 404, not an empty page
    by_id = {str(r["id"]): r for r in runs}
    # Default comparison: the newest run of the two newest versions measured.
    newest_by_version: dict[str, dict[str, Any]] = {}
    for run in runs:
        newest_by_version.setdefault(run["model"], run)
    defaults = list(newest_by_version.values())[:2]
    first = by_id.get(query.get("a", "")) or (defaults[1] if len(defaults) > 1 else None)
    second = by_id.get(query.get("b", "")) or (defaults[0] if defaults else None)
    compared = comparison(first, second) if first and second and first is not second else []
    return {
        "name": name,
        "runs": runs,
        "charts": history_charts(runs),
        "first": first,
        "second": second,
        "compared": compared,
    }


async def model_benchmarks_context(request: Request) -> dict[str, Any]:
    services = services_of(request)
    name = request.path_params["name"]
    query = dict(request.query_params)
    return await asyncio.to_thread(model_benchmarks, services, name, query)
