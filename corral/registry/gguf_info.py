"""What Corral needs to know about a GGUF file, read from its header once, at import.

The gateway never opens model files: it reads the facts recorded here from the
model's manifest, so listing models or refusing a wrong request costs no I/O. The
header is read in plain Python (``gguf_header``), so a pull or import in the
gateway does not import numpy (the ``gguf`` package would).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from corral.registry.gguf_header import GGUFHeader, file_type_name, ggml_type_name, read_header

GGUF_MAGIC = b"GGUF"
ENCODER_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "modern-bert", "neo-bert", "t5encoder"}
)
# Longest metadata array read in full: per-layer counts (one per block) fit; the
# tokenizer's arrays (tens of thousands of entries) are skipped.
_PER_LAYER_MAX = 1024


RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK


def is_embedding_model(architecture: str, pooling_type: int | None) -> bool:
    """The one rule, used by the registry (to route requests) and the engine (to build
    its context): a pooling layer, or an encoder-only architecture."""
    return (pooling_type not in (None, 0)) or architecture in ENCODER_ARCHITECTURES


@dataclass(frozen=True)
class ModelInfo:
    format: str
    architecture: str
    parameters: int
    quantization: str
    context_length: int
    embedding_length: int
    has_chat_template: bool
    embedding: bool
    synthetic: str | None = None  # why the weights are not a real model's, if they are not
    reranker: bool = False  # rank pooling: scores a query against a document
    # Shape facts for the memory estimate (0 = unknown, from an older manifest).
    block_count: int = 0
    head_count: int = 0
    head_count_kv: int = 0
    key_length: int = 0
    value_length: int = 0
    vocab_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf_info(path: Path) -> ModelInfo:
    """Parse the header of a GGUF file (raises ValueError if it is not one)."""
    # Per-layer arrays (head counts) are short; the vocabulary's are not read, only counted.
    header = read_header(path, max_array=_PER_LAYER_MAX)
    fields = header.metadata
    arch = str(fields.get("general.architecture", "unknown"))
    pooling = fields.get(f"{arch}.pooling_type")
    head_count = _int(fields.get(f"{arch}.attention.head_count"))
    n_embd = _int(fields.get(f"{arch}.embedding_length"))
    head_dim = n_embd // head_count if head_count else 0
    synthetic = fields.get("corral.synthetic")
    return ModelInfo(
        format="gguf",
        architecture=arch,
        parameters=sum(t.n_elements for t in header.tensors),
        quantization=_quantization_name(fields.get("general.file_type"), header),
        context_length=_int(fields.get(f"{arch}.context_length")),
        embedding_length=n_embd,
        has_chat_template="tokenizer.chat_template" in fields,
        embedding=is_embedding_model(arch, pooling if isinstance(pooling, int) else None),
        synthetic=synthetic if isinstance(synthetic, str) else None,
        reranker=pooling == RANK_POOLING,
        block_count=_int(fields.get(f"{arch}.block_count")),
        head_count=head_count,
        head_count_kv=_int(fields.get(f"{arch}.attention.head_count_kv")) or head_count,
        key_length=_int(fields.get(f"{arch}.attention.key_length")) or head_dim,
        value_length=_int(fields.get(f"{arch}.attention.value_length")) or head_dim,
        vocab_size=header.array_lengths.get("tokenizer.ggml.tokens", 0),
    )


def _int(value: Any) -> int:
    """GGUF allows per-layer arrays for some counts; the largest bounds the memory."""
    if isinstance(value, list | tuple):
        return int(max(value, default=0))
    return int(value or 0)


def _quantization_name(ftype: Any, header: GGUFHeader) -> str:
    if isinstance(ftype, int):
        name = file_type_name(ftype)
        if name is not None:
            return name
    types = {ggml_type_name(t.ggml_type) for t in header.tensors}
    return "+".join(sorted(types)) or "unknown"
