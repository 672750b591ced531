"""The plain-Python GGUF header reader against the ``gguf`` package, which it replaces
in the gateway: tensor infos, the facts the registry records, and the type names."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest

from corral.registry.gguf_header import (
    FILE_TYPE_NAMES,
    GGML_TYPE_NAMES,
    ggml_type_name,
    read_header,
)
from corral.registry.gguf_info import ModelInfo, is_embedding_model, read_gguf_info
from tests.support import models


def reference_info(path: Path) -> ModelInfo:
    """The facts as the ``gguf`` package reads them (Corral's reader before this one)."""
    reader = gguf.GGUFReader(str(path))
    fields: dict[str, Any] = {n: f.contents() for n, f in reader.fields.items()}
    arch = fields["general.architecture"]

    def count(key: str) -> int:
        value = fields.get(key)
        return int(max(value)) if isinstance(value, list) else int(value or 0)

    ftype = fields.get("general.file_type")
    try:
        quant = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_")
    except ValueError:
        quant = "+".join(sorted({t.tensor_type.name for t in reader.tensors}))
    heads = count(f"{arch}.attention.head_count")
    head_dim = count(f"{arch}.embedding_length") // heads if heads else 0
    return ModelInfo(
        format="gguf",
        architecture=arch,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        quantization=quant,
        context_length=count(f"{arch}.context_length"),
        embedding_length=count(f"{arch}.embedding_length"),
        has_chat_template="tokenizer.chat_template" in fields,
        embedding=is_embedding_model(arch, fields.get(f"{arch}.pooling_type")),
        synthetic=fields.get("corral.synthetic"),
        block_count=count(f"{arch}.block_count"),
        head_count=heads,
        head_count_kv=count(f"{arch}.attention.head_count_kv") or heads,
        key_length=count(f"{arch}.attention.key_length") or head_dim,
        value_length=count(f"{arch}.attention.value_length") or head_dim,
        vocab_size=len(fields.get("tokenizer.ggml.tokens") or ()),
    )


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat model through llama.cpp's own quantizer: q8_0 tensors beside f32 ones."""
    out = tmp_path_factory.mktemp("quant") / "chat-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 1
    src = models.model_file(models.CHAT)
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) == 0
    return out


@pytest.fixture(scope="module")
def per_layer_and_untyped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No ``general.file_type`` and per-layer head counts, as some converters write."""
    path = tmp_path_factory.mktemp("odd") / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(3)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_array("llama.attention.head_count_kv", [4, 2, 1])
    writer.add_tensor("a", np.zeros((3, 64), dtype=np.float32))
    writer.add_tensor("b", np.zeros((2, 5, 7), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _files(quantized: Path, odd: Path) -> list[Path]:
    specs = (models.CHAT, models.RAW, models.EMBED)
    return [*(models.model_file(s) for s in specs), quantized, odd]


def test_tensor_infos_match_the_gguf_package(quantized: Path, per_layer_and_untyped: Path) -> None:
    for path in _files(quantized, per_layer_and_untyped):
        expected = [
            (t.name, [int(d) for d in t.shape], t.tensor_type.value, int(t.n_elements))
            for t in gguf.GGUFReader(str(path)).tensors
        ]
        got = [
            (t.name, list(t.shape), t.ggml_type, t.n_elements) for t in read_header(path).tensors
        ]
        assert got == expected, path.name


def test_model_facts_match_the_gguf_package(quantized: Path, per_layer_and_untyped: Path) -> None:
    for path in _files(quantized, per_layer_and_untyped):
        assert read_gguf_info(path) == reference_info(path), path.name
    assert read_gguf_info(quantized).quantization == "Q8_0"
    odd = read_gguf_info(per_layer_and_untyped)
    assert odd.quantization == "F16+F32"  # from the tensors: the file names no type
    assert odd.head_count_kv == 4  # the largest of the per-layer counts
    assert odd.parameters == 3 * 64 + 2 * 5 * 7


def test_long_arrays_are_counted_not_read() -> None:
    path = models.model_file(models.CHAT)
    header = read_header(path)
    tokens = len(gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].contents())
    assert header.metadata["tokenizer.ggml.tokens"] == []
    assert header.array_lengths["tokenizer.ggml.tokens"] == tokens


def test_type_names_agree_with_the_gguf_package() -> None:
    for type_id, name in GGML_TYPE_NAMES.items():
        assert gguf.GGMLQuantizationType(type_id).name == name
    for file_type, name in FILE_TYPE_NAMES.items():
        assert gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") == name
    assert ggml_type_name(9999) == "TYPE_9999"


def test_a_truncated_or_corrupt_tensor_table_is_refused(tmp_path: Path) -> None:
    path = models.model_file(models.CHAT)
    data = path.read_bytes()
    reader = gguf.GGUFReader(str(path))
    # The infos end less than 32 bytes (alignment) before the data; each is > 40 bytes.
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: reader.data_offset - 40])
    with pytest.raises(ValueError, match="truncated"):
        read_header(cut)
    first = reader.tensors[0].name.encode()
    at = data.index(struct.pack("<Q", len(first)) + first) + 8 + len(first)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:at] + struct.pack("<I", 99) + data[at + 4 :])
    with pytest.raises(ValueError, match="99 dimensions"):
        read_header(bad)
