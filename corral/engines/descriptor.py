"""What the gateway knows about an engine, declared in one place per engine.

An engine has two halves. The worker half (``corral.engines.<name>.engine``) imports
the engine library and runs inside a worker process. The gateway half, an
``EngineDescriptor``, imports no engine library and declares everything the gateway
needs to route, size, start and refuse requests for the engine's models:

- the model formats it accepts and the capabilities it offers for a given model
  (read from registry facts, never by opening the model);
- ``params_model``: a typed pydantic model of its worker parameters, with defaults and
  descriptions. The same model validates ``CORRAL_*`` variables, ``corral serve``
  flags, ``corral.yaml`` and reload requests, and is what ``corral ps`` shows;
- ``command``: how to start its worker (argv and environment);
- ``estimate``: the memory a worker will take (RAM, and VRAM where it applies);
- ``precheck``: refusals the engine would make anyway, made before a model is loaded
  for the request (llama.cpp's structured-output schema check, for example).

Descriptors are instances registered by name in ``corral.engines.catalog``; adding an
engine is a new package plus one line there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from corral.protocol.upstream import ForeignServer
from corral.registry.records import Capability, ModelRecord


def default_threads() -> int:
    """Half the cores, at least one: every engine's default thread count.

    llama.cpp slows 20-60x when its threads compete with any other load for the same
    cores (measured on a 2-core machine), so the default leaves room for the gateway,
    the clients and a second worker.
    """
    return max(1, (os.cpu_count() or 2) // 2)


_found: set[str] = set()


def modules_installed(*names: str) -> bool:
    """Whether these modules can be imported here (an engine's optional extra),
    checked without importing them. Asked on every request for the engine's models:
    once found, remembered, since a path search costs more than the rest of the
    routing. Not found is asked again, so installing the extra needs no restart."""
    missing = [n for n in names if n not in _found]
    for name in missing:
        if importlib.util.find_spec(name) is None:
            return False
        _found.add(name)
    return True


class EngineParams(BaseModel):
    """Worker parameters every engine has; an engine's own model adds its fields.

    A field's server-wide default comes from ``CORRAL_<FIELD>`` (so ``CORRAL_SLOTS``
    sets the slots of every engine that has slots), a model's own value from its
    ``corral.yaml`` entry, and a reload may change either.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: int = Field(
        4, ge=1, le=256, description="Concurrent requests one model serves in one batch."
    )
    context_length: int = Field(
        4096,
        ge=0,
        description="Context tokens per slot; capped at the model's own; 0 = the model's own.",
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """What one worker will take, in bytes; ``total`` is RAM (``vram`` is apart)."""

    weights: int
    kv_cache: int
    buffers: int
    process: int
    vram: int = 0  # GPU memory, over all the devices it spans
    prompt_cache: int = 0  # RAM an engine may fill with saved prompt state
    # A share of each device's memory the engine takes whatever the model (vLLM's
    # gpu_memory_utilization): the scheduler reserves the larger of this and ``vram``.
    vram_share: float = 0.0
    devices: int = 1  # GPUs one worker spans (tensor parallelism)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.process + self.prompt_cache


@dataclass(frozen=True)
class WorkerResources:
    """What one worker asks of the node it runs on, where something places it (Ray):
    CPUs, GPUs, memory in bytes, and custom resources by name (a node's labels)."""

    cpus: float
    gpus: float
    memory: int
    custom: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchContext:
    """What the gateway tells every worker it starts, whatever the engine."""

    host: str
    port: int
    log_level: str
    spool_dir: Path
    python: str = sys.executable


@dataclass(frozen=True)
class WorkerCommand:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the gateway's
    health_path: str = "/health"  # GET answers 200 once the model is loaded
    start_timeout: float | None = None  # None: the server's worker_start_timeout
    # Set for a server that is not Corral's worker: the gateway translates for it.
    foreign: ForeignServer | None = None
    # A worker that can sleep: POST routes that free its GPU memory and take it back.
    sleep_path: str | None = None
    wake_path: str | None = None


class EngineDescriptor(ABC):
    """The gateway's side of one engine. Subclasses set the class attributes."""

    name: ClassVar[str]
    formats: ClassVar[frozenset[str]]
    params_model: ClassVar[type[EngineParams]] = EngineParams
    # ``module:callable`` that Corral's own worker (``python -m corral.worker``) calls
    # with (model path, params) to get its ``Engine``; None for an engine that brings
    # its own server and overrides ``command``.
    worker_engine: ClassVar[str | None] = None

    @abstractmethod
    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        """What this engine offers for ``record``, from its registry facts."""

    def unavailable(self, record: ModelRecord) -> str | None:
        """Why this engine cannot run ``record`` here at all (its optional dependencies
        are missing, say), for the 400 every request for it gets; None if it can."""
        return None

    def command(
        self, record: ModelRecord, params: EngineParams, ctx: LaunchContext
    ) -> WorkerCommand:
        """The worker process for ``record``: it must answer ``/health`` on ``ctx.port``
        once the model is loaded, speak OpenAI's API, and exit when stdin closes.
        The default is Corral's own worker running ``worker_engine``."""
        if self.worker_engine is None:
            raise NotImplementedError(f"the {self.name} engine must say how to start it")
        argv = (
            *(ctx.python, "-m", "corral.worker", "--engine", self.name),
            *("--model-path", str(record.path), "--model-name", record.name),
            *("--host", ctx.host, "--port", str(ctx.port)),
            *("--params", params.model_dump_json()),
            *("--log-level", ctx.log_level, "--spool-dir", str(ctx.spool_dir)),
            "--exit-on-stdin-eof",
        )
        return WorkerCommand(argv)

    def resources(
        self, record: ModelRecord, params: EngineParams, estimate: MemoryEstimate
    ) -> WorkerResources:
        """What a worker for ``record`` asks of a node (Ray placement): its threads
        as CPUs (one where the engine has no threads), the GPUs it spans if it needs
        GPU memory, its estimated RAM, and the model's declared ``resources``."""
        threads = getattr(params, "threads", None)
        gpus = estimate.devices if (estimate.vram or estimate.vram_share) else 0
        declared = record.params.get("resources")
        custom = (
            {str(k): float(v) for k, v in declared.items()} if isinstance(declared, Mapping) else {}
        )
        return WorkerResources(
            cpus=float(threads) if isinstance(threads, int) else 1.0,
            gpus=float(gpus),
            memory=estimate.total,
            custom=custom,
        )

    def sleeps(self, params: EngineParams) -> bool:
        """Whether a worker with ``params`` can sleep (its ``command`` then gives the
        routes): evicted from a GPU, it sleeps instead of stopping."""
        return False

    @abstractmethod
    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        """The memory a worker for ``record`` will take with ``params``."""

    def precheck(
        self, record: ModelRecord, capability: Capability, body: Mapping[str, Any]
    ) -> None:
        """Raise the 400 the worker would answer for ``body``, before any model is
        loaded for it. The default refuses nothing."""
        return None

    def inspect(self, record: ModelRecord) -> dict[str, Any]:
        """What ``record`` is (``corral inspect``): by default its registry facts, read
        from the file's header at import. Blocking (an engine may read the file)."""
        return {"format": record.format, "size": record.size, **record.info.to_dict()}

    def context_length(self, record: ModelRecord, params: EngineParams) -> int:
        """The context one request gets: the asked length, capped at the model's."""
        trained, asked = record.info.context_length, params.context_length
        return min(asked, trained) if asked and trained else asked or trained
