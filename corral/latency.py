"""Latency under load, measured alike wherever it is measured.

``corral bench`` measures a model through the server (``corral.cli.load``) and called
directly in the engine's own process (``corral.engines.onnx.measure``); both record
into ``Measured`` so that their figures mean the same thing, percentile for percentile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Measured:
    """One load run: every request's latency, and those that failed."""

    path: str  # "server" (V2 REST) or "in-process" (onnxruntime)
    batch_size: int
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, succeeded requests
    errors: int = 0
    first_error: str | None = None

    def failed(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message

    def to_dict(self) -> dict[str, Any]:
        done = len(self.latencies)
        ms = np.asarray(self.latencies) * 1000 if done else np.zeros(1)
        p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99))
        rate = done / self.seconds if self.seconds else 0.0
        return {
            "path": self.path,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "requests": done,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(rate, 2),
            "rows_per_s": round(rate * self.batch_size, 2),
            "p50_ms": round(p50, 3),
            "p95_ms": round(p95, 3),
            "p99_ms": round(p99, 3),
            "first_error": self.first_error,
        }


def in_threads(
    run: Callable[[], object], batch_size: int, concurrency: int, duration: float
) -> Measured:
    """``concurrency`` threads calling ``run`` for ``duration`` seconds (one call first,
    to warm it)."""
    measured = Measured("in-process", batch_size, concurrency)
    try:
        run()
    except Exception as exc:  # onnxruntime's own exception types
        measured.failed(f"{type(exc).__name__}: {exc}")
        return measured
    lock = threading.Lock()

    def client() -> None:
        mine: list[float] = []
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            run()
            mine.append(time.perf_counter() - began)
        with lock:
            measured.latencies.extend(mine)

    started = time.perf_counter()
    deadline = started + duration
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    measured.seconds = time.perf_counter() - started
    return measured
