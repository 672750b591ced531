"""The charts' figures from a Prometheus server that scrapes this gateway
(``CORRAL_PROMETHEUS_URL``), in the shape ``service.timeline`` gives them.

Where Prometheus runs, it keeps history across restarts and across several gateways
(it sums them); the ring buffer only knows this process's last hour. The queries are
PromQL over Corral's own ``/metrics``: rates of the counters, ``histogram_quantile``
over the histograms, sums of the memory gauges. Read with the standard library in the
caller's thread (the charts are computed off the event loop).
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from typing import Any

from corral.service.timeline import BUCKET_SECONDS, LATENCIES

TIMEOUT = 5.0
WINDOW = "1m"  # the rate and quantile window
HISTOGRAMS = {
    "ttft": "corral_time_to_first_token_seconds",
    "itl": "corral_inter_token_latency_seconds",
    "queue": "corral_queue_wait_seconds",
    "total": "corral_inference_duration_seconds",
}
MEMORY = {
    "estimated": "sum(corral_model_memory_estimated_bytes)",
    "rss": "sum(corral_worker_rss_bytes)",
}


class PrometheusError(Exception):
    pass


def query_range(base: str, promql: str, start: float, end: float, step: int) -> list[Any]:
    """The ``result`` of one range query (a list of series)."""
    params = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
    url = f"{base.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body = json.load(response)
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"{base}: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{base}: {body.get('error', 'query failed')}")
    result: list[Any] = body["data"]["result"]
    return result


def _column(series: dict[str, Any], grid: list[int]) -> list[float | None]:
    """One series' values on the grid (None where it has none, or NaN)."""
    by_time = {int(float(t)): float(v) for t, v in series.get("values", [])}
    out: list[float | None] = []
    for t in grid:
        value = by_time.get(t)
        out.append(None if value is None or math.isnan(value) else value)
    return out


def series(base: str, seconds: int, now: float | None = None) -> dict[str, Any]:
    """The charts' columns for the last ``seconds`` from Prometheus at ``base``."""
    step = BUCKET_SECONDS
    now = time.time() if now is None else now
    end = int(now)  # the newest point is now, not the last whole bucket
    start = end - (seconds // step - 1) * step
    grid = list(range(start, end + step, step))

    def one(promql: str) -> list[float | None]:
        result = query_range(base, promql, start, end, step)
        return _column(result[0], grid) if result else [None] * len(grid)

    def zero(values: list[float | None]) -> list[float]:
        return [v or 0.0 for v in values]

    out: dict[str, Any] = {"t": grid, "step": step}
    tokens = 'sum(rate(corral_tokens_total{{kind="{}"}}[{}]))'
    out["tokens_per_s"] = zero(one(tokens.format("completion", WINDOW)))
    out["prompt_tokens_per_s"] = zero(one(tokens.format("prompt", WINDOW)))
    by_status = query_range(
        base,
        f"sum by (status) (increase(corral_inference_requests_total[{step}s]))",
        start,
        end,
        step,
    )
    requests: dict[str, list[float]] = {}
    for s in by_status:
        kind = f"{str(s['metric'].get('status', '0'))[:1]}xx"
        column = zero(_column(s, grid))
        previous = requests.get(kind, [0.0] * len(grid))
        requests[kind] = [a + b for a, b in zip(previous, column, strict=True)]
    out["requests"] = dict(sorted(requests.items()))
    for kind in LATENCIES:
        metric = HISTOGRAMS[kind]
        for q in (50, 95, 99):
            out[f"{kind}_p{q}"] = one(
                f"histogram_quantile({q / 100}, sum by (le) (rate({metric}_bucket[{WINDOW}])))"
            )
    out["memory"] = {name: one(promql) for name, promql in MEMORY.items()}
    return out
