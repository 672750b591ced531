"""Header facts for every format the registry holds, read once when a model is added.

GGUF facts come from its header (``gguf_info``); a Hugging Face repo's from its
``config.json``, ``tokenizer_config.json`` and the safetensors headers (a JSON table
of tensor shapes at the start of each file, so counting parameters reads kilobytes,
not gigabytes); an ONNX model's from its file name only (parsing the graph needs the
``onnx`` package, which only the engine has).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.registry.gguf_info import ModelInfo, is_gguf, read_gguf_info

_SAFETENSORS_HEADER_LIMIT = 100 << 20


VERSIONED_FORMATS = frozenset({"onnx"})
"""Formats whose models keep numbered versions: importing one again under its bare name
adds ``name:N+1`` and keeps the others (Triton's model repository does the same), since
a tensor model's new training run replaces the old one only once it has proved itself.
An LLM's tags name variants the user picks (``:q4``, ``:q8``), so a bare name replaces
``name:latest`` as Ollama does."""


def detect_format(files: Mapping[str, Path]) -> str:
    """``gguf``, ``safetensors`` or ``onnx``, from the files' names and magic bytes."""
    names = list(files)
    if any(n.endswith(".gguf") for n in names) or (
        len(files) == 1 and is_gguf(next(iter(files.values())))
    ):
        return "gguf"
    if any(n.endswith(".onnx") for n in names):
        return "onnx"
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    raise ValueError(
        "no model file found (expected a .gguf file, .safetensors weights with a "
        "config.json, or an .onnx model)"
    )


def primary_file(files: Mapping[str, Path], fmt: str) -> str:
    """The file an engine opens: the GGUF (its first split), the ONNX graph, or the
    directory itself ("" ) for a transformers repo."""
    names = sorted(files)
    if fmt == "gguf":
        ggufs = [n for n in names if n.endswith(".gguf") and not _is_mmproj(n)] or names
        return ggufs[0]
    if fmt == "onnx":
        onnx = [n for n in names if n.endswith(".onnx")]
        return "model.onnx" if "model.onnx" in onnx else onnx[0]
    return ""


def read_info(files: Mapping[str, Path], fmt: str) -> ModelInfo:
    if fmt == "gguf":
        return read_gguf_info(files[primary_file(files, fmt)])
    if fmt == "safetensors":
        return _hf_info(files)
    return ModelInfo(
        format="onnx",
        architecture="onnx",
        parameters=0,
        quantization="unknown",
        context_length=0,
        embedding_length=0,
        has_chat_template=False,
        embedding=False,
    )


def _hf_info(files: Mapping[str, Path]) -> ModelInfo:
    if "config.json" not in files:
        raise ValueError("a safetensors model needs its config.json")
    config = _json(files["config.json"])
    text_config = config.get("text_config", config)
    tokenizer_config = (
        _json(files["tokenizer_config.json"]) if ("tokenizer_config.json" in files) else {}
    )
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    architecture = str(architectures[0])
    parameters = sum(
        _safetensors_parameters(path)
        for name, path in files.items()
        if name.endswith(".safetensors")
    )
    quant = config.get("quantization_config", {}).get("quant_method") or str(
        config.get("torch_dtype")
        or config.get("dtype")
        or _safetensors_dtype([p for n, p in files.items() if n.endswith(".safetensors")])
    )
    heads = int(text_config.get("num_attention_heads", 0))
    hidden = int(text_config.get("hidden_size", 0))
    context = int(text_config.get("max_position_embeddings", 0))
    # A cross-encoder: a sequence classifier with one label, the relevance score.
    labels = config.get("id2label") or {}
    reranker = architecture.endswith("ForSequenceClassification") and (
        int(config.get("num_labels", len(labels) or 1)) == 1
    )
    sentence_transformers = "modules.json" in files
    if sentence_transformers and "sentence_bert_config.json" in files:
        # The length it was trained to embed, shorter than the positions it has.
        context = int(_json(files["sentence_bert_config.json"]).get("max_seq_length") or context)
    generative = architecture.endswith(("ForCausalLM", "ForConditionalGeneration"))
    return ModelInfo(
        format="safetensors",
        architecture=architecture,
        parameters=parameters,
        quantization=quant,
        context_length=context,
        embedding_length=hidden,
        has_chat_template="chat_template" in tokenizer_config or "chat_template.jinja" in files,
        embedding=not generative and not reranker,
        reranker=reranker,
        block_count=int(text_config.get("num_hidden_layers", 0)),
        head_count=heads,
        head_count_kv=int(text_config.get("num_key_value_heads", heads)),
        key_length=hidden // heads if heads else 0,
        value_length=hidden // heads if heads else 0,
        vocab_size=int(text_config.get("vocab_size", 0)),
    )


def _json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def _safetensors_parameters(path: Path) -> int:
    """Sum of tensor sizes from the header: 8-byte length, then a JSON table."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _SAFETENSORS_HEADER_LIMIT:
            raise ValueError(f"{path.name}: implausible safetensors header")
        header = json.loads(f.read(length))
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in tensor["shape"]:
            count *= int(dim)
        total += count
    return total


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _safetensors_dtype(paths: list[Path]) -> str:
    """The weights' dtype, from the first safetensors header (older configs omit it)."""
    for path in sorted(paths)[:1]:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _SAFETENSORS_HEADER_LIMIT:
                return "unknown"
            header = json.loads(f.read(length))
        kinds = {  # the weights' float type; integer buffers (position ids) aside
            t["dtype"]
            for n, t in header.items()
            if n != "__metadata__" and t["dtype"] in _SAFETENSORS_DTYPES
        }
        if len(kinds) == 1:
            return _SAFETENSORS_DTYPES.get(kinds.pop(), "unknown")
    return "unknown"


def _is_mmproj(name: str) -> bool:
    return Path(name).name.lower().startswith("mmproj")
