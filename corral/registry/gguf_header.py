"""Read a GGUF file's header (typed key-value metadata, then tensor infos) in plain Python.

The gateway reads GGUF headers twice over: to show a model's metadata (Ollama's
``/api/show``: ``model_info`` and the chat template), and to record a model's facts
when it is pulled, imported or copied (``gguf_info``). The ``gguf`` package would
read them, but imports numpy, and the gateway must stay free of numpy and small
(tests/integration/test_gateway_footprint.py). The header is a simple format
(ggml's docs/gguf.md): magic, version, tensor and key counts, typed key-value
pairs, then one (name, shape, type, offset) record per tensor, all before any
tensor data, so this reads just that, a few hundred kB even for a large model.
Arrays longer than ``max_array`` (the tokenizer's vocabulary and merges) are
skipped and read as empty, as Ollama shows them unless ``verbose``; their lengths
are kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_MAX_STRING = 64 << 20  # no real key or value is near this: a corrupt length, not a string
_MAX_DIMS = 8  # ggml's GGML_MAX_DIMS is 4; more is a corrupt header


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int  # ggml's type id: see GGML_TYPE_NAMES
    offset: int = 0  # of its data, from the start of the data section

    @property
    def n_elements(self) -> int:
        return prod(self.shape)


@dataclass
class GGUFHeader:
    metadata: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)  # every array key's length
    tensors: list[TensorInfo] = field(default_factory=list)
    data_size: int = 0  # bytes from the (aligned) start of the tensor data to the end

    def tensor_bytes(self) -> dict[str, int]:
        """Each tensor's size on disk (padding included), from the offsets: exact for
        every quantization type, with no table of block sizes to keep."""
        ordered = sorted(self.tensors, key=lambda t: t.offset)
        ends = [t.offset for t in ordered[1:]] + [self.data_size]
        return {t.name: max(0, end - t.offset) for t, end in zip(ordered, ends, strict=True)}


def read_metadata(path: Path, max_array: int = 5) -> dict[str, Any]:
    """Every key of the header with its value (arrays above ``max_array`` items: [])."""
    return read_header(path, max_array, tensors=False).metadata


def read_header(path: Path, max_array: int = 5, *, tensors: bool = True) -> GGUFHeader:
    """The metadata (as ``read_metadata``) and, with ``tensors``, every tensor's info."""
    with path.open("rb", buffering=1 << 20) as f:
        if f.read(4) != MAGIC:
            raise ValueError(f"{path} is not a GGUF file (bad magic bytes)")
        reader = _Reader(f, "<")
        version = reader.scalar("I")
        if version & 0xFFFF == 0:  # written big-endian
            reader = _Reader(f, ">")
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old to read")
        n_tensors = reader.scalar("Q")
        count = reader.scalar("Q")
        header = GGUFHeader({})
        for _ in range(count):
            key = reader.string()
            kind = reader.scalar("I")
            if kind == _ARRAY:
                item_kind, length = reader.scalar("I"), reader.scalar("Q")
                header.array_lengths[key] = length
                header.metadata[key] = reader.array(item_kind, length, max_array)
            else:
                header.metadata[key] = reader.value(kind, max_array)
        if tensors:
            header.tensors = [reader.tensor_info() for _ in range(n_tensors)]
            alignment = int(header.metadata.get("general.alignment", 32) or 32)
            start = -(-f.tell() // alignment) * alignment
            header.data_size = max(0, path.stat().st_size - start)
        return header


class _Reader:
    def __init__(self, f: BinaryIO, order: str) -> None:
        self.f = f
        self.order = order

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("the GGUF header ends early (truncated file)")
        return struct.unpack(self.order + fmt, data)[0]

    def string(self) -> str:
        size = self._string_size()
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("the GGUF header ends early (truncated file)")
        return data.decode("utf-8", errors="replace")

    def value(self, kind: int, max_array: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item_kind, count = self.scalar("I"), self.scalar("Q")
        return self.array(item_kind, count, max_array)

    def array(self, item_kind: int, count: int, max_array: int) -> list[Any]:
        if count > max_array:
            self._skip(item_kind, count)
            return []
        return [self.value(item_kind, max_array) for _ in range(count)]

    def tensor_info(self) -> TensorInfo:
        name = self.string()
        n_dims = self.scalar("I")
        if n_dims > _MAX_DIMS:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions: the header is corrupt")
        shape = tuple(int(self.scalar("Q")) for _ in range(n_dims))
        ggml_type = self.scalar("I")
        offset = self.scalar("Q")
        return TensorInfo(name, shape, ggml_type, int(offset))

    def _skip(self, kind: int, count: int) -> None:
        if kind in _SCALARS:
            self.f.seek(count * struct.calcsize(_SCALARS[kind]), 1)
        elif kind == _STRING:
            for _ in range(count):
                self.f.seek(self._string_size(), 1)
        else:
            for _ in range(count):
                self.value(kind, 0)

    def _string_size(self) -> int:
        size = int(self.scalar("Q"))
        if size > _MAX_STRING:
            raise ValueError(f"a GGUF string of {size} bytes: the header is corrupt")
        return size


# Names of ggml's tensor types and of llama.cpp's file types ("MOSTLY_" dropped), as
# the ``gguf`` package names them (tests/unit/test_gguf_header.py checks they agree).
# An id missing here (a type newer than this table) reads as "TYPE_<id>".
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}  # fmt: skip
FILE_TYPE_NAMES = {
    0: "ALL_F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 1024: "GUESSED",
}  # fmt: skip


def ggml_type_name(type_id: int) -> str:
    return GGML_TYPE_NAMES.get(type_id, f"TYPE_{type_id}")


def file_type_name(file_type: int) -> str | None:
    """llama.cpp's name for ``general.file_type``; None for an id this table lacks."""
    return FILE_TYPE_NAMES.get(file_type)
