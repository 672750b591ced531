"""The ONNX Runtime engine (worker side): one ``InferenceSession`` per model.

The session runs on the CUDA execution provider when onnxruntime has it (and the
parameters allow), else on the CPU, with the thread counts and graph optimisation
level the parameters give. Concurrent requests are stacked into shared calls
(``batching.TensorBatcher``).

What ONNX Runtime hands back is made into V2 tensors: string tensors are BYTES, and a
scikit-learn classifier's ``ZipMap`` output (a sequence of {class: probability} maps,
which V2 cannot carry) becomes an FP32 matrix, one row per input and one column per
class, in the model's class order: what ``predict_proba`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from corral.engines.base import Capabilities, Engine, TensorModel, Tensors
from corral.engines.onnx.batching import TensorBatcher
from corral.engines.onnx.descriptor import OnnxParams
from corral.errors import EngineLoadError, InvalidRequest
from corral.protocol.v2 import TensorSpec
from corral.registry.records import Capability

log = logging.getLogger("corral.engines.onnx")

# ONNX element types (as onnxruntime names them) and their V2 datatypes.
DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def load(model_path: Path, params: OnnxParams) -> Engine:
    return OnnxEngine(model_path, params)


def providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise EngineLoadError(
            "device is cuda, but this onnxruntime has no CUDA execution provider "
            f"(it has {', '.join(available)}); install onnxruntime-gpu."
        )
    return ["CPUExecutionProvider"]


def open_session(model_path: Path, params: OnnxParams) -> ort.InferenceSession:
    """The model's onnxruntime session as ``params`` set it up: the worker's, and the
    one ``corral bench`` measures in its own process to show what the server adds."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = params.intra_op_threads
    options.inter_op_num_threads = params.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION[params.graph_optimization]
    options.log_severity_level = 3  # errors only: warnings name every unused initializer
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers(params.device))
    except EngineLoadError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EngineLoadError(f"onnxruntime cannot load {model_path.name}: {exc}") from None


class OnnxEngine(Engine):
    def __init__(self, model_path: Path, params: OnnxParams) -> None:
        self.session = open_session(model_path, params)
        inputs = tuple(_spec(arg) for arg in self.session.get_inputs())
        outputs = tuple(_spec(arg) for arg in self.session.get_outputs())
        unusable = [s.name for s in inputs if s.datatype not in DATATYPES.values()]
        if unusable:
            raise EngineLoadError(
                f"{model_path.name} takes inputs that are not tensors: {', '.join(unusable)}."
            )
        self._maps = {arg.name for arg in self.session.get_outputs() if _is_map_sequence(arg.type)}
        on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self._bound_calls = 0
        self._bind_to = (
            ("cuda" if on_cuda else "cpu") if _binds(params.io_binding, on_cuda) else None
        )
        self.tensor_model = TensorModel("onnxruntime_onnx", inputs, outputs)
        stackable = params.dynamic_batching and all(s.batched for s in (*inputs, *outputs))
        self.capabilities = Capabilities(
            offers=frozenset({Capability.TENSOR}), context_length=0, slots=params.slots
        )
        self._batcher = TensorBatcher(
            self._run, stackable, params.max_batch_size, params.max_queue_delay_ms / 1000
        )
        if stackable:
            batching = f"dynamic batching up to {params.max_batch_size} rows"
        elif params.dynamic_batching:
            batching = "no dynamic batching (a tensor's first dimension is fixed)"
        else:
            batching = "no dynamic batching (off)"
        log.info("loaded %s on %s; %s", model_path.name, self.session.get_providers()[0], batching)

    async def infer(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        return await self._batcher.submit(inputs, outputs)

    def _run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        feed = {name: feedable(value) for name, value in inputs.items()}
        try:
            if self._bindable(feed, outputs):
                values = self._run_bound(feed, outputs)
            else:
                values = self.session.run(list(outputs), feed)
        except Exception as exc:  # a runtime refusal of these inputs (a bad value)
            raise InvalidRequest(f"onnxruntime could not run the model: {exc}") from None
        return {
            name: self._tensor(name, value) for name, value in zip(outputs, values, strict=True)
        }

    def _bindable(self, feed: Tensors, outputs: Sequence[str]) -> bool:
        """IO binding takes numeric tensors only: not strings, not ZipMap's maps."""
        return (
            self._bind_to is not None
            and not self._maps.intersection(outputs)
            and all(v.dtype != object for v in feed.values())
        )

    def _run_bound(self, feed: Tensors, outputs: Sequence[str]) -> list[Any]:
        self._bound_calls += 1
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in outputs:
            binding.bind_output(name, self._bind_to or "cpu")
        self.session.run_with_iobinding(binding)
        values: list[Any] = binding.copy_outputs_to_cpu()
        return values

    def _tensor(self, name: str, value: Any) -> np.ndarray[Any, Any]:
        if name in self._maps:
            rows = [list(row.values()) for row in value]
            return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        array = np.asarray(value)
        if array.dtype.kind == "U":
            array = array.astype(object)
        return array

    def stats(self) -> dict[str, int]:
        b = self._batcher
        return {
            "infer_calls": b.calls,
            "infer_requests": b.requests,
            "infer_busy_ns": b.busy_ns,
            "infer_bound_calls": self._bound_calls,
        }

    def close(self) -> None:
        self._batcher.close()


def feedable(value: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """BYTES arrive as bytes; an ONNX string tensor takes str."""
    if value.dtype == object:
        out = np.empty(value.shape, dtype=object)
        out.ravel()[:] = [v.decode("utf-8", "replace") for v in value.ravel()]
        return out
    return value


def _binds(setting: str, on_cuda: bool) -> bool:
    return setting == "on" or (setting == "auto" and on_cuda)


def _is_map_sequence(onnx_type: str) -> bool:
    return onnx_type.startswith("seq(map(")


def _spec(arg: Any) -> TensorSpec:
    """A session input or output as a V2 tensor: ``None`` or named dimensions free."""
    if _is_map_sequence(arg.type):  # ZipMap: one row per input, one column per class
        return TensorSpec(arg.name, "FP32", ("N", "classes"))
    datatype = DATATYPES.get(arg.type, arg.type)
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, shape)
