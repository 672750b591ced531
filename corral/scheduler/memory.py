"""How much memory a model will take, and how much there is.

The estimate is read from the GGUF header facts recorded at import: weights (the
file, which llama.cpp maps and touches entirely), the KV cache for every slot's
context, llama.cpp's compute and output buffers, and the worker process itself.
After each load the scheduler compares it with the worker's measured RSS, logs
both and shows both in ``ps``: a bad estimate is how other servers run out of
memory, so it must be visible. Calibration figures are in ``design.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from corral.registry.gguf_info import ModelInfo

MiB = 1 << 20
# A worker process before any model: Python, uvicorn, numpy and llama.cpp's library.
WORKER_BASE_BYTES = 80 * MiB
KV_BYTES_PER_VALUE = 2  # f16 K and V caches (llama.cpp's default)
CTX_PAD = 256  # llama.cpp rounds each KV stream up to a multiple of this


@dataclass(frozen=True)
class WorkerParams:
    """What a worker is started with; part of the estimate and of `reload`."""

    threads: int
    slots: int
    context_length: int  # per slot; 0 = the model's own
    batch_size: int


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    buffers: int
    process: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.process


def estimate(info: ModelInfo, file_size: int, params: WorkerParams) -> MemoryEstimate:
    train_ctx = info.context_length or 4096
    per_slot = min(params.context_length or train_ctx, train_ctx)
    if info.embedding:
        # Embedding workers keep one context of the model's size and no per-slot streams.
        cells, slots = _pad(per_slot), 1
    else:
        cells, slots = _pad(per_slot), params.slots
    kv_width = info.head_count_kv * (info.key_length + info.value_length)
    if kv_width == 0:  # manifest without shape facts: assume a KV cache like the weights'
        kv = file_size // 4
    else:
        kv = info.block_count * cells * slots * kv_width * KV_BYTES_PER_VALUE
    ubatch = max(params.batch_size, params.slots)
    buffers = ubatch * 4 * (info.vocab_size + 6 * info.embedding_length)
    return MemoryEstimate(
        weights=file_size, kv_cache=kv, buffers=buffers, process=WORKER_BASE_BYTES
    )


def _pad(n: int) -> int:
    return -(-n // CTX_PAD) * CTX_PAD


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


def gpu_memory() -> list[tuple[int, int]]:
    """(free, total) bytes per NVIDIA GPU via NVML; [] without GPUs or nvidia-ml-py."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # NVML present but no driver or GPU: no GPU budget
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            out.append((int(mem.free), int(mem.total)))
        return out
    finally:
        pynvml.nvmlShutdown()
