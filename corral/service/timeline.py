"""The last hour of traffic and memory, in 10-second buckets, for the dashboard's charts.

Prometheus keeps history when one scrapes the server; most people running Corral on
a laptop have none, and still want to see the last hour. This ring buffer is fed by
the same observer hook as the metrics (one ``RequestDone`` per answered request) and
by a memory sample each bucket; it holds at most an hour (360 buckets of a few
counters and at most ``SAMPLES`` latencies per kind), so its size is fixed whatever
the load.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from corral.service.inference import RequestDone

BUCKET_SECONDS = 10
SPAN_SECONDS = 3600
SAMPLES = 512  # latencies kept per bucket and kind (a uniform sample beyond)
LATENCIES = ("ttft", "itl", "queue", "total")


@dataclass
class Bucket:
    start: int
    requests: dict[str, int] = field(default_factory=dict)  # by status class: 2xx, 4xx, ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # latencies offered, per kind
    memory: dict[str, float] | None = None  # the last sample in this bucket


def status_class(done: RequestDone) -> str:
    if not done.complete:
        return "cut"
    return f"{done.status // 100}xx"


def percentile(values: Iterable[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Timeline:
    def __init__(self, bucket_seconds: int = BUCKET_SECONDS, span_seconds: int = SPAN_SECONDS):
        self.bucket_seconds = bucket_seconds
        self._buckets: deque[Bucket] = deque(maxlen=span_seconds // bucket_seconds)
        self._lock = threading.Lock()  # observers run on the loop, readers in threads
        self._random = random.Random(0)

    def _bucket(self, now: float) -> Bucket:
        start = int(now) // self.bucket_seconds * self.bucket_seconds
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(Bucket(start))
        return self._buckets[-1]

    def observe(self, done: RequestDone, now: float | None = None) -> None:
        with self._lock:
            bucket = self._bucket(time.time() if now is None else now)
            kind = status_class(done)
            bucket.requests[kind] = bucket.requests.get(kind, 0) + 1
            if done.usage is not None:
                bucket.prompt_tokens += done.usage.prompt_tokens
                bucket.completion_tokens += done.usage.completion_tokens
            self._keep(bucket, "queue", done.queued_ns / 1e9)
            self._keep(bucket, "total", done.total_ns / 1e9)
            if done.ttft_ns is not None:
                self._keep(bucket, "ttft", done.ttft_ns / 1e9)
            if (itl := done.inter_token_seconds) is not None:
                self._keep(bucket, "itl", itl)

    def _keep(self, bucket: Bucket, kind: str, value: float) -> None:
        """Reservoir sampling: every value offered has the same chance to be kept."""
        kept = bucket.latencies.setdefault(kind, [])
        seen = bucket.seen.get(kind, 0) + 1
        bucket.seen[kind] = seen
        if len(kept) < SAMPLES:
            kept.append(value)
        else:
            slot = self._random.randrange(seen)
            if slot < SAMPLES:
                kept[slot] = value

    def sample_memory(self, memory: dict[str, float], now: float | None = None) -> None:
        with self._lock:
            self._bucket(time.time() if now is None else now).memory = dict(memory)

    def series(self, now: float | None = None, seconds: int = SPAN_SECONDS) -> dict[str, Any]:
        """Every bucket of the last ``seconds``, empty ones included (a gap is a quiet
        interval, not a missing one), as columns the charts draw."""
        now = time.time() if now is None else now
        step = self.bucket_seconds
        last = int(now) // step * step
        first = last - (seconds // step - 1) * step
        with self._lock:
            by_start = {b.start: b for b in self._buckets if b.start >= first}
            rows = [by_start.get(t) for t in range(first, last + step, step)]
            out: dict[str, Any] = {"t": list(range(first, last + step, step)), "step": step}
            statuses = sorted({k for b in by_start.values() for k in b.requests})
            out["requests"] = {
                s: [b.requests.get(s, 0) if b else 0 for b in rows] for s in statuses
            }
            out["tokens_per_s"] = [b.completion_tokens / step if b else 0.0 for b in rows]
            out["prompt_tokens_per_s"] = [b.prompt_tokens / step if b else 0.0 for b in rows]
            for kind in LATENCIES:
                for q in (50, 95, 99):
                    out[f"{kind}_p{q}"] = [
                        percentile(b.latencies.get(kind, ()), q) if b else None for b in rows
                    ]
            memory_keys = sorted({k for b in by_start.values() if b.memory for k in b.memory})
            out["memory"] = {
                k: [b.memory.get(k) if b and b.memory else None for b in rows] for k in memory_keys
            }
        return out
