"""A recording fake of the scheduler core's Effects: no processes, a hand-turned clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.engines.descriptor import EngineParams, MemoryEstimate
from corral.errors import CorralError
from corral.registry.gguf_info import ModelInfo
from corral.registry.records import ModelRecord
from corral.scheduler.core import Lease
from corral.scheduler.policy import Gpu
from corral.scheduler.queue import Ticket

GiB = 1 << 30


def record(name: str, gib: float = 1.0) -> ModelRecord:
    info = ModelInfo("gguf", "llama", 1, "F16", 2048, 64, True, False)
    return ModelRecord(f"{name}:latest", Path(f"/models/{name}"), int(gib * GiB), name, 0.0, info)


def estimate_by_size(rec: ModelRecord, params: EngineParams) -> MemoryEstimate:
    """The fake models need exactly their file size."""
    return MemoryEstimate(weights=rec.size, kv_cache=0, buffers=0, process=0)


@dataclass
class FakeWorker:
    model: str
    params: EngineParams


@dataclass
class FakeEffects:
    budget: int = 8 * GiB
    clock: float = 1000.0
    started: list[tuple[str, EngineParams]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    granted: dict[int, Lease] = field(default_factory=dict)
    failed: dict[int, CorralError] = field(default_factory=dict)
    notified: list[tuple[Any, CorralError | None]] = field(default_factory=list)
    grant_order: list[str] = field(default_factory=list)
    gpus: dict[int, tuple[int, int]] = field(default_factory=dict)  # index: (budget, total)
    placed: dict[str, tuple[int, ...]] = field(default_factory=dict)  # model: its GPUs
    slept: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)

    def now(self) -> float:
        return self.clock

    def memory_budget(self, held: int) -> int:
        return self.budget

    def gpu_budget(self, held: Mapping[int, int]) -> dict[int, Gpu]:
        return {i: Gpu(budget, total) for i, (budget, total) in self.gpus.items()}

    def start_worker(
        self, key: str, rec: ModelRecord, params: EngineParams, gpus: tuple[int, ...]
    ) -> None:
        self.started.append((key, params))
        self.placed[key] = gpus

    def stop_worker(self, model: str, worker: Any) -> None:
        self.stopped.append(model)

    def sleep_worker(self, model: str, worker: Any) -> None:
        self.slept.append(model)

    def wake_worker(self, model: str, worker: Any) -> None:
        self.woken.append(model)

    def grant(self, ticket: Ticket, lease: Lease) -> None:
        self.granted[ticket.id] = lease
        self.grant_order.append(ticket.model)

    def fail(self, ticket: Ticket, error: CorralError) -> None:
        self.failed[ticket.id] = error

    def measure(self, worker: Any) -> int | None:
        return None

    def notify(self, waiter: Any, error: CorralError | None) -> None:
        self.notified.append((waiter, error))

    def starts(self) -> list[str]:
        return [name for name, _ in self.started]
