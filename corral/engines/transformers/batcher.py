"""Concurrent embedding and reranking requests gathered into shared forward passes.

Each request queues its inputs; one task takes everything queued (up to ``limit``
inputs, after at most ``wait`` for more) into one forward pass on a thread, while the
next requests gather behind it. So 32 clients sending one sentence each cost a few
forward passes, not 32.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    inputs: list[list[int]]
    done: asyncio.Future[list[Any]]


@dataclass
class Batcher:
    """Gathers the inputs of concurrent requests into forward passes of at most
    ``limit`` inputs, run one at a time on a thread."""

    run: Callable[[list[list[int]]], list[Any]]
    limit: int
    wait: float = 0.0  # seconds to gather more inputs before a pass that is not full
    queue: list[_Job] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    passes: int = 0
    inputs: int = 0
    forward_ns: int = 0

    async def submit(self, inputs: list[list[int]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._serve())
        job = _Job(inputs, loop.create_future())
        self.queue.append(job)
        self.wake.set()
        return await job.done

    async def _serve(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                await self._gather()
                taken: list[_Job] = []
                count = 0
                while self.queue and (not taken or count + len(self.queue[0].inputs) <= self.limit):
                    job = self.queue.pop(0)
                    if job.done.cancelled():
                        continue  # its client left while it waited
                    taken.append(job)
                    count += len(job.inputs)
                if not taken:
                    continue
                flat = [ids for job in taken for ids in job.inputs]
                started = time.perf_counter_ns()
                try:
                    results = await asyncio.to_thread(self._chunked, flat)
                except Exception as exc:  # the engine's failure is each request's
                    for job in taken:
                        if not job.done.done():
                            job.done.set_exception(exc)
                    continue
                self.forward_ns += time.perf_counter_ns() - started
                self.passes += 1
                self.inputs += len(flat)
                offset = 0
                for job in taken:
                    part = results[offset : offset + len(job.inputs)]
                    offset += len(job.inputs)
                    if not job.done.done():
                        job.done.set_result(part)

    async def _gather(self) -> None:
        """Let more inputs join a pass that is not full yet, for at most ``wait``: a
        pass of one input costs nearly as much as one of many."""
        deadline = time.monotonic() + self.wait
        while sum(len(j.inputs) for j in self.queue) < self.limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except TimeoutError:
                return

    def _chunked(self, flat: list[list[int]]) -> list[Any]:
        """One request may bring more than ``limit`` inputs: it gets several passes."""
        out: list[Any] = []
        for start in range(0, len(flat), self.limit):
            out.extend(self.run(flat[start : start + self.limit]))
        return out
