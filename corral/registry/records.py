"""What the registry hands out: frozen records of installed models, and capabilities.

Kept apart from ``store`` (which imports SQLAlchemy) so that everything above the
registry (engine descriptors, the scheduler core and its test fakes) can take and make
records without importing the database layer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.registry.gguf_info import ModelInfo


class Capability(enum.StrEnum):
    """What a model can be asked to do. One vocabulary for the registry, the engine
    descriptors and every API (each API maps these to its own names at its edge)."""

    COMPLETION = "completion"
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    RERANK = "rerank"
    TENSOR = "tensor"  # tensors in, tensors out: the Open Inference Protocol (V2)


def capability_names(capabilities: Iterable[Capability]) -> list[str]:
    """As listings show them: in the enum's order, whatever the set's."""
    offered = set(capabilities)
    return [c.value for c in Capability if c in offered]


@dataclass(frozen=True)
class ModelFile:
    path: str  # inside the model ("model.gguf", "onnx/model.onnx")
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelRecord:
    name: str  # canonical "name:tag"
    path: Path  # what the engine opens: a GGUF/ONNX file, or a model directory
    size: int  # all files together
    sha256: str  # of the primary file (the model's id in listings)
    created: float
    info: ModelInfo
    format: str = "gguf"
    engine: str | None = None  # declared engine; None = the one for its format
    files: tuple[ModelFile, ...] = ()
    source: str = ""
    revision: str | None = None
    aliases: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    last_used: float | None = field(default=None, compare=False, hash=False)
    # What its bare name means (``iris`` -> this ``iris:2``); set by ``Registry.list``.
    default: bool = field(default=False, compare=False, hash=False)

    @property
    def base(self) -> str:
        """The name without its tag (version)."""
        return self.name.rpartition(":")[0]

    @property
    def tag(self) -> str:
        return self.name.rpartition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "format": self.format,
            "engine": self.engine,
            "source": self.source,
            "revision": self.revision,
            "aliases": list(self.aliases),
            "files": [vars(f) for f in self.files],
            "params": dict(self.params),
            "info": self.info.to_dict(),
            "created_at": self.created,
            "last_used_at": self.last_used,
            "default": self.default,
        }
