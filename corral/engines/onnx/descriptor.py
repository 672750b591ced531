"""The gateway's side of the ONNX Runtime engine: ``.onnx`` models, their parameters,
their memory. Imports no onnxruntime: that is the worker's, and an optional extra
(``pip install 'corral[onnx]'``).

An ONNX model is a tensor model: it is called with the Open Inference Protocol (V2),
never with text. Its memory: the graph's weights, once as loaded and once more as
onnxruntime's optimised copy (measured: RSS grows by about twice the file), the
process with onnxruntime imported (``WORKER_BASE_BYTES``), and room for a batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Literal

from pydantic import Field

from corral.engines.descriptor import (
    EngineDescriptor,
    EngineParams,
    MemoryEstimate,
    default_threads,
    modules_installed,
)
from corral.errors import EngineError, UnsupportedCapability
from corral.registry.records import Capability, ModelRecord

MiB = 1 << 20
# A worker with onnxruntime and numpy imported, no model yet (measured: ~75 MiB).
WORKER_BASE_BYTES = 90 * MiB
TENSOR = frozenset({Capability.TENSOR})
EXTRA = "pip install 'corral[onnx]'"


class OnnxParams(EngineParams):
    # Requests at once: as many as one batched call takes, so that concurrent
    # requests can be stacked into it.
    slots: int = Field(
        32, ge=1, le=1024, description="Requests one model takes at once (rows of one call)."
    )
    context_length: int = Field(0, ge=0, description="Unused by tensor models.")
    intra_op_threads: int = Field(
        default_factory=default_threads,
        ge=1,
        description="Threads onnxruntime uses inside one operator.",
    )
    inter_op_threads: int = Field(
        1, ge=1, description="Threads onnxruntime uses to run operators side by side."
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime's graph optimisation level."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto = the CUDA execution provider when onnxruntime has it, else CPU.",
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run through onnxruntime's IO binding, outputs allocated on the "
        "device: auto = on with the CUDA provider (a copy and a sync less per call), off "
        "on CPU (where it saves nothing).",
    )
    dynamic_batching: bool = Field(
        True,
        description="Stack concurrent requests along the first dimension into one call "
        "(models whose first dimension is free only).",
    )
    max_batch_size: int = Field(32, ge=1, le=65536, description="Most rows one batched call takes.")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a call that is not full waits for more requests; 0 = it "
        "takes what queued while the previous call ran.",
    )


def engine_installed() -> bool:
    """Whether this environment has the extra (checked without importing it)."""
    return modules_installed("onnxruntime")


class OnnxDescriptor(EngineDescriptor):
    name = "onnx"
    formats = frozenset({"onnx"})
    params_model = OnnxParams
    worker_engine = "corral.engines.onnx.engine:load"

    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        return TENSOR

    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        assert isinstance(params, OnnxParams)
        return MemoryEstimate(
            weights=record.size,
            kv_cache=0,
            buffers=record.size + 16 * MiB,
            process=WORKER_BASE_BYTES,
        )

    def unavailable(self, record: ModelRecord) -> str | None:
        if not engine_installed():
            return (
                f"The model '{record.name}' runs on the onnx engine, which is not installed "
                f"here: {EXTRA}."
            )
        return None

    def context_length(self, record: ModelRecord, params: EngineParams) -> int:
        return 0

    def inspect(self, record: ModelRecord) -> dict[str, Any]:
        """The graph's facts, read by ``corral.engines.onnx.inspect`` in its own process:
        the gateway imports no ``onnx``."""
        if not modules_installed("onnx"):
            raise UnsupportedCapability(
                f"Inspecting ONNX models needs the onnx package: {EXTRA}.", param="model"
            )
        command = [sys.executable, "-m", "corral.engines.onnx.inspect", str(record.path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise EngineError(f"Reading {record.name}'s graph took over 120 s.") from None
        if done.returncode != 0:
            raise EngineError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        facts: dict[str, Any] = json.loads(done.stdout)
        return facts


descriptor = OnnxDescriptor()
