"""Concurrent embedding and reranking requests gathered into shared forward passes.

Each request queues its inputs; one task takes everything queued (up to ``limit``
inputs, after at most ``wait`` for more) into one forward pass on a thread, while the
next requests gather behind it. So 32 clients sending one sentence each cost a few
forward passes, not 32.

Inputs of different lengths are padded to the longest in their pass, and on a CPU
that padding is most of the waste: a pass of random-length sentences costs 30% more
than the same sentences sorted. So a pass is sorted by length and cut into chunks
where a new forward call costs less than the padding it saves (``plan_chunks``), with
the price of a forward call measured on the model itself (``measure_call_cost``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.engines.gathering import Gathering


@dataclass
class _Job:
    inputs: list[list[int]]
    done: asyncio.Future[list[Any]]


@dataclass
class Batcher(Gathering[_Job]):
    """Gathers the inputs of concurrent requests into forward passes of at most
    ``limit`` inputs, run one at a time on a thread."""

    run_pass: Callable[[list[list[int]]], list[Any]]
    limit: int
    wait: float = 0.0  # seconds to gather more inputs before a pass that is not full
    # What one more forward call costs, in padded token positions: the chunks'
    # trade-off (see plan_chunks). Infinite: every pass is one call, as on a GPU.
    call_cost: float = float("inf")
    queue: list[_Job] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    passes: int = 0
    inputs: int = 0
    forward_ns: int = 0

    def gather_limit(self) -> int:
        return self.limit

    def gather_wait(self) -> float:
        return self.wait

    async def submit(self, inputs: list[list[int]]) -> list[Any]:
        job = _Job(inputs, asyncio.get_running_loop().create_future())
        self.enqueue(job)
        return await job.done

    def queued(self) -> int:
        return sum(len(j.inputs) for j in self.queue)

    def take(self) -> list[_Job]:
        taken: list[_Job] = []
        count = 0
        while self.queue and (not taken or count + len(self.queue[0].inputs) <= self.limit):
            job = self.queue.pop(0)
            if job.done.cancelled():
                continue  # its client left while it waited
            taken.append(job)
            count += len(job.inputs)
        return taken

    async def run(self, taken: list[_Job]) -> None:
        flat = [ids for job in taken for ids in job.inputs]
        started = time.perf_counter_ns()
        try:
            results = await asyncio.to_thread(self._chunked, flat)
        except Exception as exc:  # the engine's failure is each request's
            for job in taken:
                if not job.done.done():
                    job.done.set_exception(exc)
            return
        self.forward_ns += time.perf_counter_ns() - started
        self.passes += 1
        self.inputs += len(flat)
        offset = 0
        for job in taken:
            part = results[offset : offset + len(job.inputs)]
            offset += len(job.inputs)
            if not job.done.done():
                job.done.set_result(part)

    def _chunked(self, flat: list[list[int]]) -> list[Any]:
        """Runs the pass as length-sorted chunks (at most ``limit`` inputs each, for one
        request that brings more) and returns the results in the inputs' order."""
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
        lengths = [len(flat[i]) for i in order]
        out: list[Any] = [None] * len(flat)
        for start, end in plan_chunks(lengths, self.call_cost, self.limit):
            chunk = order[start:end]
            for index, result in zip(chunk, self.run_pass([flat[i] for i in chunk]), strict=True):
                out[index] = result
        return out


def plan_chunks(lengths: list[int], call_cost: float, limit: int) -> list[tuple[int, int]]:
    """The cheapest cut of length-sorted inputs into forward calls of at most ``limit``.

    A call on inputs ``[i, j)`` costs ``call_cost + (j - i) * lengths[j - 1]``: a fixed
    price plus every input padded to the chunk's longest. Dynamic programming over the
    cut points; a pass holds at most a few dozen inputs, so the quadratic cost is
    nothing beside one forward call."""
    n = len(lengths)
    if n and call_cost == float("inf"):
        return [(start, min(start + limit, n)) for start in range(0, n, limit)]
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - limit), end):
            cost = best[start] + call_cost + (end - start) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks: list[tuple[int, int]] = []
    end = n
    while end:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]


def measure_call_cost(
    run: Callable[[list[list[int]]], object],
    ids: list[int],
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """What one more forward call costs, in padded token positions, on this model and
    device: ``run`` timed on one input and on sixteen of ``ids`` (best of three each,
    after a warm-up), the difference giving the price of a position."""

    def best(batch: list[list[int]]) -> float:
        run(batch)
        times = []
        for _ in range(3):
            started = clock()
            run(batch)
            times.append(clock() - started)
        return min(times)

    one, sixteen = best([ids]), best([ids] * 16)
    if sixteen - one <= 0.05 * one:  # width nearly free (a GPU): never split
        return float("inf")
    per_position = (sixteen - one) / (15 * len(ids))
    return max(0.0, one - len(ids) * per_position) / per_position
