"""The transformers engine's gateway side: what a safetensors repo can do, and clear
refusals where it cannot run (no extra installed; text generation not built yet)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from corral.engines.catalog import load_catalog
from corral.engines.transformers import descriptor as module
from corral.engines.transformers.descriptor import TransformersParams
from corral.errors import InvalidRequest, UnsupportedCapability
from corral.registry.formats import detect_format, read_info
from corral.registry.gguf_info import ModelInfo
from corral.registry.records import Capability, ModelRecord


def repo(directory: Path, config: dict[str, object], **extra: str) -> dict[str, Path]:
    """A repo's files: config.json, one safetensors header, and ``extra`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [10, 4], "data_offsets": [0, 80]}})
    raw = header.encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(80))
    for name, text in extra.items():
        (directory / name).write_text(text)
    return {p.name: p for p in directory.iterdir()}


def test_what_a_repo_can_do_is_read_from_its_config(tmp_path: Path) -> None:
    cross = read_info(
        files := repo(
            tmp_path / "ce",
            {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}},
        ),
        detect_format(files),
    )
    assert cross.reranker and not cross.embedding and cross.quantization == "bfloat16"
    classifier = read_info(
        repo(
            tmp_path / "nli",
            {"architectures": ["BertForSequenceClassification"], "num_labels": 3},
        ),
        "safetensors",
    )
    assert not classifier.reranker  # three labels: a classifier, not a relevance score
    sentence = read_info(
        repo(
            tmp_path / "st",
            {"architectures": ["BertModel"], "max_position_embeddings": 512},
            **{"modules.json": "[]", "sentence_bert_config.json": '{"max_seq_length": 256}'},
        ),
        "safetensors",
    )
    assert sentence.embedding and sentence.context_length == 256
    causal = read_info(
        repo(tmp_path / "lm", {"architectures": ["LlamaForCausalLM"]}), "safetensors"
    )
    assert not causal.embedding and not causal.reranker


def record(info: ModelInfo) -> ModelRecord:
    return ModelRecord("m:latest", Path("/models/m"), 1 << 20, "m", 0.0, info, format="safetensors")


def info(**facts: object) -> ModelInfo:
    base = {
        "format": "safetensors",
        "architecture": "BertModel",
        "parameters": 22_000_000,
        "quantization": "float32",
        "context_length": 256,
        "embedding_length": 384,
        "has_chat_template": False,
        "embedding": True,
    }
    return ModelInfo(**{**base, **facts})  # type: ignore[arg-type]


def test_safetensors_models_go_to_the_transformers_engine_and_say_what_they_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "engine_installed", lambda: True)  # with or without torch here
    catalog = load_catalog([], environ={})
    embedder = record(info())
    assert catalog.for_record(embedder).name == "transformers"
    assert catalog.check_serves(embedder, Capability.EMBEDDINGS).name == "transformers"
    with pytest.raises(UnsupportedCapability, match="does not produce embeddings"):
        catalog.check_serves(record(info(embedding=False, reranker=True)), Capability.EMBEDDINGS)
    chat = record(info(architecture="LlamaForCausalLM", embedding=False, has_chat_template=True))
    assert catalog.check_serves(chat, Capability.CHAT).name == "transformers"
    plain = record(info(architecture="GPT2LMHeadModel", embedding=False))
    with pytest.raises(UnsupportedCapability, match="cannot serve chat"):
        catalog.check_serves(plain, Capability.CHAT)  # no chat template: completions only
    with pytest.raises(InvalidRequest, match="min_p is not supported") as refused:
        catalog.precheck(chat, Capability.CHAT, {"model": "m", "min_p": 0.1})
    assert refused.value.param == "min_p"
    catalog.precheck(chat, Capability.CHAT, {"model": "m", "temperature": 0.3, "seed": None})


def test_without_the_extra_every_request_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "engine_installed", lambda: False)
    catalog = load_catalog([], environ={})
    with pytest.raises(UnsupportedCapability, match=r"pip install 'corral\[transformers\]'"):
        catalog.check_serves(record(info()), Capability.EMBEDDINGS)


def test_the_estimate_counts_weights_at_the_dtype_used() -> None:
    d = module.descriptor
    fp32 = d.estimate(record(info()), TransformersParams())
    bf16 = d.estimate(record(info()), TransformersParams(dtype="bfloat16"))
    assert fp32.weights == 22_000_000 * 4 and bf16.weights == 22_000_000 * 2
    assert fp32.process == module.WORKER_BASE_BYTES + module.torch_build_bytes()
    assert fp32.kv_cache == 0
    llama = info(
        architecture="LlamaForCausalLM",
        embedding=False,
        block_count=2,
        head_count=4,
        head_count_kv=2,
        embedding_length=64,
        vocab_size=400,
    )
    generation = d.estimate(record(llama), TransformersParams(slots=8, context_length=256))
    pages = module.kv_blocks(8, 256)
    assert generation.kv_cache == pages * module.PAGE_SIZE * 2 * 2 * 2 * 16 * 4  # K and V
