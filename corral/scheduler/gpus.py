"""What GPUs the machine has, how much memory each has free, and how much a worker holds.

Read with NVML (``nvidia-ml-py``, imported only when present). Without it, or without
an NVIDIA driver, there are no GPUs: the VRAM budget is empty and everything about
VRAM is inert (a model that needs VRAM is refused, saying why). ``CORRAL_GPU_PROBE``
names another probe (``module:attribute``), which is how tests give the scheduler a
device table on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("corral.scheduler")


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    total: int  # bytes
    used: int  # bytes in use now, by anyone


class GpuProbe(Protocol):
    def devices(self) -> list[GpuDevice]:
        """The GPUs, in the order CUDA numbers them (``CUDA_VISIBLE_DEVICES``)."""

    def process_memory(self, pids: Collection[int]) -> int | None:
        """GPU memory these processes hold, all devices together; None if unknown."""


class NoGpus:
    def devices(self) -> list[GpuDevice]:
        return []

    def process_memory(self, pids: Collection[int]) -> int | None:
        return None


class NvmlGpus:
    """NVML through ``nvidia-ml-py`` (``import pynvml``)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    @classmethod
    def open(cls) -> NvmlGpus | None:
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
        except Exception as exc:  # no package, no driver, no device: no GPUs
            log.debug("no NVML: %s", exc)
            return None
        return cls(nvml)

    def devices(self) -> list[GpuDevice]:
        nvml = self._nvml
        found = []
        with contextlib.suppress(Exception):
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                found.append(
                    GpuDevice(
                        index=index,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        total=int(memory.total),
                        used=int(memory.used),
                    )
                )
        return found

    def process_memory(self, pids: Collection[int]) -> int | None:
        nvml, wanted, total, seen = self._nvml, set(pids), 0, False
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid in wanted and process.usedGpuMemory is not None:
                        total += int(process.usedGpuMemory)
                        seen = True
        except Exception:
            return None
        return total if seen else 0


def load_gpu_probe(name: str) -> GpuProbe:
    """``""``: NVML where it works, else none; ``"none"``: none; else ``module:attr``."""
    if name == "none":
        return NoGpus()
    if name:
        module, _, attribute = name.partition(":")
        probe: GpuProbe = getattr(importlib.import_module(module), attribute or "probe")
        return probe
    return NvmlGpus.open() or NoGpus()
