"""Dynamic batching: concurrent requests stacked along the first dimension.

Each request queues its input tensors. One task takes the oldest request and every
queued request that can share its call (the same outputs asked for, and inputs of the
same datatypes and trailing dimensions), up to ``max_rows`` rows in all, waiting at
most ``delay`` for more when the call is not full; runs the call on a thread;
and splits the outputs back by each request's rows. Requests queue behind a running
call, so under load calls fill by themselves, with no delay at all.

A model whose tensors do not all have a free first dimension is never stacked: each
request is its own call. A shared call that fails is run again request by request, so
one request's bad values fail only that request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corral.engines.gathering import Gathering

Tensors = dict[str, np.ndarray[Any, Any]]
Run = Callable[[Tensors, Sequence[str]], Tensors]


@dataclass
class _Job:
    inputs: Tensors
    outputs: tuple[str, ...]
    rows: int
    key: tuple[Any, ...]
    done: asyncio.Future[Tensors]


@dataclass
class TensorBatcher(Gathering[_Job]):
    run_call: Run
    stackable: bool
    max_rows: int
    delay: float = 0.0
    queue: list[_Job] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    calls: int = 0  # calls to the model
    requests: int = 0  # requests they served
    busy_ns: int = 0

    def gather_limit(self) -> int:
        return self.max_rows

    def gather_wait(self) -> float:
        return self.delay if self.stackable else 0.0

    async def submit(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        rows = next(iter(inputs.values())).shape[0] if self.stackable and inputs else 0
        key = (
            tuple(outputs),
            tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items())),
        )
        job = _Job(inputs, tuple(outputs), rows, key, asyncio.get_running_loop().create_future())
        self.enqueue(job)
        return await job.done

    def queued(self) -> int:
        return sum(j.rows for j in self.queue)

    def take(self) -> list[_Job]:
        first = self.queue.pop(0)
        if first.done.cancelled():
            return []
        taken = [first]
        if not self.stackable:
            return taken
        rows = first.rows
        keep: list[_Job] = []
        for job in self.queue:
            if job.done.cancelled():
                continue
            if job.key == first.key and rows + job.rows <= self.max_rows:
                taken.append(job)
                rows += job.rows
            else:
                keep.append(job)
        self.queue = keep
        return taken

    async def run(self, taken: list[_Job]) -> None:
        await self._call(taken)

    async def _call(self, taken: list[_Job]) -> None:
        if len(taken) == 1:
            inputs = taken[0].inputs
        else:
            inputs = {
                name: np.concatenate([job.inputs[name] for job in taken])
                for name in taken[0].inputs
            }
        started = time.perf_counter_ns()
        try:
            results = await asyncio.to_thread(self.run_call, inputs, taken[0].outputs)
        except Exception as exc:
            if len(taken) > 1:  # one request's bad values must not fail the others
                for job in taken:
                    await self._call([job])
                return
            if not taken[0].done.done():
                taken[0].done.set_exception(exc)
            return
        finally:
            self.busy_ns += time.perf_counter_ns() - started
        self.calls += 1
        self.requests += len(taken)
        if len(taken) == 1:
            if not taken[0].done.done():
                taken[0].done.set_result(results)
            return
        offset = 0
        for job in taken:
            part = {name: value[offset : offset + job.rows] for name, value in results.items()}
            offset += job.rows
            if not job.done.done():
                job.done.set_result(part)
