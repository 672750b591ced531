"""The registry database: records, shared blobs, aliases, copies, migrations."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import InvalidRequest, ModelExists, ModelNotFound
from corral.registry.store import Registry
from tests.support import models


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path)
    yield reg
    reg.close()


def blobs(home: Path) -> set[str]:
    return {p.name for p in (home / "blobs").iterdir() if p.name.startswith("sha256-")}


def test_records_header_facts_source_and_files(registry: Registry, tmp_path: Path) -> None:
    path = models.model_file(models.CHAT)
    record = registry.import_file(path, "chat")
    assert record.format == "gguf" and record.info.architecture == "llama"
    assert record.info.has_chat_template and record.info.parameters > 0
    assert record.source == str(path.resolve()) and record.revision is None
    [file] = record.files
    assert file.size == path.stat().st_size == record.size
    assert record.path == tmp_path / "blobs" / f"sha256-{file.sha256}"
    row = (
        sqlite3.connect(tmp_path / "registry.db")
        .execute(
            "select name, format, architecture, quantization, context_length, has_chat_template "
            "from models"
        )
        .fetchall()
    )
    assert row == [("chat:latest", "gguf", "llama", record.info.quantization, 4096, 1)]


def test_copy_shares_blobs_and_removal_counts_references(
    registry: Registry, tmp_path: Path
) -> None:
    a = registry.import_file(models.model_file(models.CHAT), "a")
    b = registry.copy("a", "b:v2")
    assert b.name == "b:v2" and b.files == a.files
    assert len(blobs(tmp_path)) == 1
    with pytest.raises(ModelExists):
        registry.copy("a", "b:v2")
    assert registry.remove("a") == ["a:latest"]
    assert a.path.exists(), "b still uses the blob"
    assert registry.get("b:v2").path == a.path
    registry.remove("b:v2")
    assert blobs(tmp_path) == set()
    assert registry.is_empty()


def test_replacing_a_model_frees_its_old_blob(registry: Registry, tmp_path: Path) -> None:
    registry.import_file(models.model_file(models.CHAT), "m")
    registry.import_file(models.model_file(models.EMBED), "m")
    assert registry.get("m").info.embedding
    assert len(blobs(tmp_path)) == 1


def test_aliases_resolve_to_the_model_and_go_with_it(registry: Registry) -> None:
    registry.import_file(models.model_file(models.CHAT), "chat")
    record = registry.set_aliases("chat", ["default", "assistant:v1"])
    assert record.aliases == ("assistant:v1", "default:latest")
    assert registry.get("default").name == "chat:latest"
    registry.import_file(models.model_file(models.EMBED), "emb")
    with pytest.raises(InvalidRequest, match="already names another model"):
        registry.set_aliases("emb", ["default"])
    with pytest.raises(InvalidRequest, match="already a model's name"):
        registry.set_aliases("emb", ["chat"])
    assert registry.remove("default") == ["default:latest"]  # just the alias
    assert registry.get("chat").aliases == ("assistant:v1",)
    assert registry.remove("chat") == ["chat:latest", "assistant:v1"]
    with pytest.raises(ModelNotFound):
        registry.get("assistant:v1")


def test_multi_file_model_is_laid_out_as_a_directory(registry: Registry, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "onnx").mkdir(parents=True)
    (src / "onnx" / "model.onnx").write_bytes(b"\x08\x07fake-onnx-graph")
    (src / "config.json").write_text("{}")
    record = registry.import_path(src, "tensor")
    assert record.format == "onnx"
    assert record.path == tmp_path / "models" / "tensor" / "1" / "onnx" / "model.onnx"
    assert record.path.read_bytes() == b"\x08\x07fake-onnx-graph"
    assert (record.path.parent.parent / "config.json").read_text() == "{}"
    registry.remove("tensor")
    assert not (tmp_path / "models" / "tensor" / "latest").exists()
    assert blobs(tmp_path) == set()


def test_not_a_model_is_refused_before_copying(registry: Registry, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(InvalidRequest, match="not a model Corral can serve"):
        registry.import_path(junk, "junk")
    assert not (tmp_path / "blobs").exists() or blobs(tmp_path) == set()


def test_usage_is_recorded_in_batches(registry: Registry) -> None:
    registry.import_file(models.model_file(models.EMBED), "e")
    assert registry.get("e").last_used is None
    registry.touch("e:latest")
    registry.flush_usage()
    used = registry.get("e").last_used
    assert used is not None and used > 0


def test_reopening_keeps_everything_and_schema_is_versioned(tmp_path: Path) -> None:
    first = Registry(tmp_path)
    first.import_file(models.model_file(models.CHAT), "keep")
    first.set_aliases("keep", ["k"])
    first.close()
    second = Registry(tmp_path)  # runs migrations again: must be a no-op
    assert second.get("k").name == "keep:latest"
    second.close()
    version = (
        sqlite3.connect(tmp_path / "registry.db")
        .execute("select version_num from alembic_version")
        .fetchall()
    )
    assert version == [("0009",)]


def test_models_from_the_json_manifest_layout_are_adopted(tmp_path: Path) -> None:
    """An upgrade from Corral 0.1 (one JSON manifest per model) loses nothing."""
    source = models.model_file(models.EMBED)
    import hashlib

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / f"sha256-{digest}").write_bytes(source.read_bytes())
    manifest = tmp_path / "models" / "old" / "latest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "name": "old:latest",
                "blob": f"sha256-{digest}",
                "size": source.stat().st_size,
                "sha256": digest,
                "created": 1.0,
                "source": str(source),
                "info": {},
            }
        )
    )
    reg = Registry(tmp_path)
    try:
        record = reg.get("old")
        assert record.sha256 == digest and record.info.embedding
        assert not manifest.exists() and manifest.with_suffix(".json.migrated").exists()
    finally:
        reg.close()
