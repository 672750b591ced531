"""One task serving a queue of requests in gathered groups.

Both batching engines work this way: the transformers engine gathers embedding inputs
into forward passes, the onnx engine stacks tensor requests into one call. Requests
queue; one task takes a group (``take``), runs it (``run``, usually on a thread) while
the next requests queue behind it, and so on. Before a group that is not full it may
wait a little for more (``gather_wait()`` seconds, until ``queued()`` reaches
``gather_limit()``): under load groups fill by themselves, with no wait at all.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

J = TypeVar("J")


class Gathering(ABC, Generic[J]):
    """Subclasses (dataclasses) hold ``queue``, ``wake`` and ``task`` as fields."""

    queue: list[J]
    wake: asyncio.Event
    task: asyncio.Task[None] | None

    def enqueue(self, job: J) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._serve())
        self.queue.append(job)
        self.wake.set()

    @abstractmethod
    def take(self) -> list[J]:
        """The next group, removed from the queue (empty: nothing left to run)."""

    @abstractmethod
    async def run(self, taken: list[J]) -> None:
        """Run a group and settle each of its jobs."""

    @abstractmethod
    def queued(self) -> int:
        """How much is queued, in the units of ``gather_limit``."""

    @abstractmethod
    def gather_limit(self) -> int:
        """How much fills a group: no waiting once this much is queued."""

    @abstractmethod
    def gather_wait(self) -> float:
        """Seconds a group that is not full may wait for more (0: none)."""

    async def _serve(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                await self._gather()
                taken = self.take()
                if taken:
                    await self.run(taken)

    async def _gather(self) -> None:
        wait = self.gather_wait()
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        limit = self.gather_limit()
        while self.queued() < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except TimeoutError:
                return

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
