"""The requests waiting for one model, in the order they will be served.

Interactive requests go before batch requests. Within a priority, API keys take
turns (round-robin), so one client with a thousand queued requests cannot starve
another with one. Within a key, first come, first served.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    INTERACTIVE = 0
    BATCH = 1


_ids = itertools.count(1)


@dataclass(eq=False)
class Ticket:
    """One request's place in line. Identity is the object itself."""

    model: str
    priority: Priority = Priority.INTERACTIVE
    key: str = "anonymous"
    keep_alive: float | None = None  # seconds to stay loaded after it; None = not given
    # Patient tickets (the batch runner's, bounded by its own in-flight limit) never
    # get QueueFull or a queue timeout: they wait for capacity instead of polling.
    patient: bool = False
    # The request's prefix, hashed: which of a model's replicas has its KV cache.
    affinity: int | None = None
    arrived: float = 0.0
    deadline: float | None = None
    seq: int = 0  # arrival order, numbered by the scheduler (clocks tie; this does not)
    id: int = field(default_factory=lambda: next(_ids))

    def order(self) -> tuple[int, int]:
        """Global order across models: priority, then arrival."""
        return (int(self.priority), self.seq)


class FairQueue:
    def __init__(self) -> None:
        self._classes: dict[Priority, OrderedDict[str, deque[Ticket]]] = {
            p: OrderedDict() for p in Priority
        }
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Ticket]:
        for keys in self._classes.values():
            for tickets in keys.values():
                yield from tickets

    def push(self, ticket: Ticket) -> None:
        keys = self._classes[ticket.priority]
        keys.setdefault(ticket.key, deque()).append(ticket)
        self._size += 1

    def peek(self) -> Ticket | None:
        for keys in self._classes.values():
            for tickets in keys.values():
                return tickets[0]
        return None

    def pop(self) -> Ticket | None:
        for keys in self._classes.values():
            if not keys:
                continue
            key, tickets = next(iter(keys.items()))
            ticket = tickets.popleft()
            del keys[key]
            if tickets:
                keys[key] = tickets  # re-inserted last: the next key takes its turn
            self._size -= 1
            return ticket
        return None

    def take(self, eligible: Callable[[Ticket], bool]) -> Ticket | None:
        """The next eligible ticket in fair order (as ``pop``: priority, then keys in
        turn, first come first served within a key), removed; its key goes last."""
        for keys in self._classes.values():
            for key, tickets in list(keys.items()):
                for ticket in tickets:
                    if eligible(ticket):
                        tickets.remove(ticket)
                        del keys[key]
                        if tickets:
                            keys[key] = tickets
                        self._size -= 1
                        return ticket
        return None

    def remove(self, ticket: Ticket) -> bool:
        keys = self._classes[ticket.priority]
        tickets = keys.get(ticket.key)
        if tickets is None or ticket not in tickets:
            return False
        tickets.remove(ticket)
        if not tickets:
            del keys[ticket.key]
        self._size -= 1
        return True
