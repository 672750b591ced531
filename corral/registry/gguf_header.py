"""Read a GGUF file's metadata (its typed key-value header) in plain Python.

The gateway shows a model's metadata (Ollama's ``/api/show``: ``model_info`` and the
chat template), which the registry does not keep. The ``gguf`` package would read
it, but imports numpy, and the gateway must stay free of numpy and small
(tests/integration/test_gateway_footprint.py). The header is a simple format
(ggml's docs/gguf.md): magic, version, tensor and key counts, then typed key-value
pairs before any tensor data, so this reads just that, a few hundred kB even for
a large model. Arrays longer than ``max_array`` (the tokenizer's vocabulary and
merges) are skipped and read as empty, as Ollama shows them unless ``verbose``.
"""

from __future__ import annotations

import struct
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


def read_metadata(path: Path, max_array: int = 5) -> dict[str, Any]:
    """Every key of the header with its value (arrays above ``max_array`` items: [])."""
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
        reader.scalar("Q")  # tensor count
        count = reader.scalar("Q")
        out = {}
        for _ in range(count):
            key = reader.string()
            out[key] = reader.value(reader.scalar("I"), max_array)
        return out


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
        if count > max_array:
            self._skip(item_kind, count)
            return []
        return [self.value(item_kind, max_array) for _ in range(count)]

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
