"""Prometheus ``/metrics``: one scrape target for the gateway and every worker.

Two kinds of figures:

- **Events**, recorded as they happen: HTTP requests by route and status with
  latency histograms (``observe_http``, from the ``Observe`` middleware), and
  inference requests by model with queue wait, time to first token, inter-token
  latency and tokens (``observe_inference``, an ``InferenceService`` observer).
- **State**, read at scrape time by ``_StateCollector``: each model's state, slots,
  queue and memory (the scheduler's snapshot), loads, evictions and crashes (its
  event counts), each worker's engine figures (prompt cache, decode time: fetched
  from the workers' ``/health`` just before the scrape), batches by status and their
  requests, pulled bytes, and 429s by key.

Each app has its own registry: several gateways in one test process do not collide.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from corral.api.spec import HEALTH, route
from corral.batch.tables import BatchRow
from corral.service.inference import RequestDone

if TYPE_CHECKING:
    from corral.api.services import Services

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
WORKER_STATS_TIMEOUT = 1.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "corral_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "corral_http_request_duration_seconds",
            "HTTP request duration, to the end of the answer (streams included).",
            ["method", "route"],
            buckets=LATENCY,
            registry=r,
        )
        self.requests = Counter(
            "corral_inference_requests",
            "Requests handed to a model's worker, by the worker's status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "corral_inference_duration_seconds",
            "From joining the model's queue to the end of the answer.",
            ["model", "endpoint"],
            buckets=LATENCY,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "corral_queue_wait_seconds",
            "Time waiting for a slot (loading the model included).",
            ["model"],
            buckets=LATENCY,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "corral_time_to_first_token_seconds",
            "Streams: from joining the queue to the answer's first bytes.",
            ["model"],
            buckets=LATENCY,
            registry=r,
        )
        self.itl_seconds = Histogram(
            "corral_inter_token_latency_seconds",
            "Streams: mean time between completion tokens after the first, per request.",
            ["model"],
            buckets=TOKEN_LATENCY,
            registry=r,
        )
        self.tokens = Counter(
            "corral_tokens",
            "Tokens, by kind (prompt, completion).",
            ["model", "kind"],
            registry=r,
        )

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)

    def observe_inference(self, done: RequestDone) -> None:
        model, endpoint = done.model, done.path
        self.requests.labels(model, endpoint, str(done.status)).inc()
        self.request_seconds.labels(model, endpoint).observe(done.total_ns / 1e9)
        self.queue_seconds.labels(model).observe(done.queued_ns / 1e9)
        if done.usage is not None:
            self.tokens.labels(model, "prompt").inc(done.usage.prompt_tokens)
            self.tokens.labels(model, "completion").inc(done.usage.completion_tokens)
        if done.ttft_ns is not None:
            self.ttft_seconds.labels(model).observe(done.ttft_ns / 1e9)
        if (itl := done.inter_token_seconds) is not None:
            self.itl_seconds.labels(model).observe(itl)

    def attach(self, services: Services) -> None:
        """Read the services' state at each scrape (call once, after building them)."""
        self.state = _StateCollector(services)
        self.registry.register(self.state)


class _StateCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.worker_stats: dict[str, dict[str, Any]] = {}  # by model, fetched per scrape

    def collect(self) -> Iterator[Metric]:
        yield from self._models()
        yield from self._events()
        yield from self._engines()
        yield from self._batches()
        yield from self._pulls_and_limits()

    def _models(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "corral_model_state",
            "1 for the state each known model is in.",
            labels=["model", "state"],
        )
        busy = GaugeMetricFamily("corral_slots_busy", "Slots decoding a request.", labels=["model"])
        total = GaugeMetricFamily(
            "corral_slots_total", "Slots of a loaded model.", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "corral_queue_depth", "Requests waiting for a slot.", labels=["model"]
        )
        rss = GaugeMetricFamily(
            "corral_worker_rss_bytes", "Resident memory of a model's worker.", labels=["model"]
        )
        estimated = GaugeMetricFamily(
            "corral_model_memory_estimated_bytes",
            "The scheduler's memory estimate.",
            labels=["model"],
        )
        vram = GaugeMetricFamily(
            "corral_model_vram_estimated_bytes",
            "GPU memory estimated for a model.",
            labels=["model"],
        )
        # A model with replicas is one series per model: its replicas' sums (and a
        # count of replicas per state), so that every series stays unique.
        states: collections.Counter[tuple[str, str]] = collections.Counter()
        sums: list[tuple[GaugeMetricFamily, collections.Counter[str]]] = [
            (family, collections.Counter())
            for family in (busy, total, queued, rss, estimated, vram)
        ]
        for m in self.services.scheduler.snapshot():
            states[(m.model, m.state)] += 1
            values = (
                m.slots["busy"],
                m.slots["total"],
                m.queued,
                m.memory.actual or 0,
                m.memory.estimated,
                m.memory.estimate_parts.get("vram", 0),
            )
            for (_, by_model), value in zip(sums, values, strict=True):
                by_model[m.model] += value
        for (model, model_state), count in states.items():
            state.add_metric([model, model_state], count)
        for family, by_model in sums:
            for model, value in by_model.items():
                if family is not rss or value:  # no RSS series for a model not measured
                    family.add_metric([model], value)
        yield from (state, busy, total, queued, rss, estimated, vram)

    def _events(self) -> Iterator[Metric]:
        families = {
            "loads": CounterMetricFamily(
                "corral_model_loads", "Models loaded (worker ready).", labels=["model"]
            ),
            "load_failures": CounterMetricFamily(
                "corral_model_load_failures", "Loads that failed.", labels=["model"]
            ),
            "load_seconds": CounterMetricFamily(
                "corral_model_load_seconds", "Time spent loading, summed.", labels=["model"]
            ),
            "evictions": CounterMetricFamily(
                "corral_model_evictions", "Idle models unloaded to make room.", labels=["model"]
            ),
            "crashes": CounterMetricFamily(
                "corral_worker_crashes", "Workers that exited unasked.", labels=["model"]
            ),
        }
        for model, events in self.services.scheduler.events().items():
            for name, family in families.items():
                family.add_metric([model], getattr(events, name))
        yield from families.values()

    def _engines(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for model, stats in self.worker_stats.items():
            for name, value in stats.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(
                        f"corral_engine_{name}",
                        f"The engine's own figure {name!r}.",
                        labels=["model"],
                    )
                family.add_metric([model], value)
        yield from families.values()

    def _batches(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("corral_batches", "Batches by status.", labels=["status"])
        done = GaugeMetricFamily(
            "corral_batch_requests",
            "Requests of unfinished batches, by outcome (completed, failed, total).",
            labels=["outcome"],
        )
        engine = self.services.batches.engine
        with Session(engine) as session:
            counts = session.execute(
                select(BatchRow.status, func.count()).group_by(BatchRow.status)
            )
            for status, count in counts:
                by_status.add_metric([status], count)
            active = session.execute(
                select(
                    func.sum(BatchRow.completed),
                    func.sum(BatchRow.failed),
                    func.sum(BatchRow.total),
                ).where(
                    BatchRow.status.in_(("validating", "in_progress", "finalizing", "cancelling"))
                )
            ).one()
        for outcome, value in zip(("completed", "failed", "total"), active, strict=True):
            done.add_metric([outcome], value or 0)
        yield from (by_status, done)

    def _pulls_and_limits(self) -> Iterator[Metric]:
        pulled = CounterMetricFamily("corral_pull_bytes", "Bytes downloaded by pulls.")
        pulled.add_metric([], sum(job.bytes_done for job in self.services.pulls.list()))
        refused = CounterMetricFamily(
            "corral_rate_limited_requests",
            "Requests refused with 429 by a key's limits.",
            labels=["key"],
        )
        for key, count in list(self.services.limiter.refusals.items()):
            refused.add_metric([key], count)
        yield from (pulled, refused)


async def fetch_worker_stats(services: Services) -> dict[str, dict[str, Any]]:
    """Each worker's engine figures, from its ``/health`` (one second at most each)."""
    timeout = aiohttp.ClientTimeout(total=WORKER_STATS_TIMEOUT)

    async def one(url: str) -> dict[str, Any]:
        try:
            async with services.session.get(url + "/health", timeout=timeout) as reply:
                body = await reply.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    workers = [w for w in services.scheduler.workers() if w.state in ("ready", "draining")]
    answers = await asyncio.gather(*(one(w.url) for w in workers))
    return {w.model: a for w, a in zip(workers, answers, strict=True)}


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services  # who may ask: auth.py ("metrics")
    services.metrics.state.worker_stats = await fetch_worker_stats(services)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE)


routes = [
    route(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics (the gateway's and every worker's)",
        tag=HEALTH,
        reply_media=CONTENT_TYPE,
        access="metrics",
    )
]
