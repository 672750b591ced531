"""The Open Inference Protocol (KServe V2): its wire models, for REST and gRPC.

Triton, KServe and MLServer speak it, so ``tritonclient`` and KServe tooling work
against Corral unchanged. A request names tensors (name, shape, datatype) whose data
comes either as JSON (``data``, flat or nested, row-major) or, with Triton's binary
tensor extension, as raw bytes after the JSON: the header ``Inference-Header-Content-
Length`` says where the JSON ends, and each such input says its byte count in
``parameters.binary_data_size``. Outputs come back the same two ways, as each output
(``parameters.binary_data``) or the request (``parameters.binary_data_output``) asks.

No numpy here: the gateway imports this module, and keeps no array library in its
process. The tensors themselves are decoded in the worker (``protocol.tensors``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class TensorSpec:
    """One of a model's inputs or outputs. A dimension is a size, or -1 (or the name of
    a symbolic dimension, which V2 shows as -1) where any size goes."""

    name: str
    datatype: str
    shape: tuple[int | str, ...]

    @property
    def wire_shape(self) -> list[int]:
        return [d if isinstance(d, int) and d >= 0 else -1 for d in self.shape]

    @property
    def batched(self) -> bool:
        """Whether the first dimension is free: requests may be stacked along it."""
        return bool(self.shape) and not (isinstance(self.shape[0], int) and self.shape[0] >= 0)


# --- wire models ----------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Wire):
    name: str
    shape: list[int] = Field(max_length=32)
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Wire):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Wire):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(_Wire):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(_Wire):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Wire):
    name: str
    versions: list[str] = []
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(_Wire):
    name: str
    version: str
    extensions: list[str]


def metadata_of(specs: Iterable[TensorSpec]) -> list[TensorMetadata]:
    return [TensorMetadata(name=s.name, datatype=s.datatype, shape=s.wire_shape) for s in specs]
