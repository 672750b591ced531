"""How much memory there is, and how much a worker holds.

How much a model *will* take is its engine's estimate (``EngineDescriptor.estimate``).
After each load the scheduler compares that estimate with the worker's measured RSS,
logs both and shows both in ``ps``: a bad estimate is how other servers run out of
memory, so it must be visible. Calibration figures are in ``design.md``.
"""

from __future__ import annotations

from typing import Protocol


class MemoryProbe(Protocol):
    """What the machine has; injected so policy tests need no real machine."""

    def available(self) -> int:
        """Bytes of RAM available to new processes now."""

    def rss(self, pid: int) -> int | None:
        """Resident memory of a process, or None if it is gone."""


class SystemMemory:
    def available(self) -> int:
        import psutil

        return int(psutil.virtual_memory().available)

    def rss(self, pid: int) -> int | None:
        import psutil

        try:
            return int(psutil.Process(pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (a foreign server's engine processes)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        return [pid, *(child.pid for child in parent.children(recursive=True))]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return [pid]
