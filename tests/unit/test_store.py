from pathlib import Path

import pytest

from corral.errors import InvalidRequest, ModelNotFound
from corral.registry.store import Registry, canonical_name
from tests.support import models


def test_canonical_names() -> None:
    assert canonical_name("demo") == "demo:latest"
    assert canonical_name("org/model:q4") == "org/model:q4"
    for bad in ("../x", "a:b:c", "", "a b", "x/../y"):
        with pytest.raises(InvalidRequest):
            canonical_name(bad)


def test_import_get_list(tmp_path: Path) -> None:
    store = Registry(tmp_path)
    assert store.is_empty()
    record = store.import_file(models.model_file(models.EMBED), "emb")
    assert record.name == "emb:latest"
    assert record.path.is_file() and record.path.name == f"sha256-{record.sha256}"
    assert record.info.embedding and record.info.architecture == "llama"
    assert record.info.synthetic and "Random weights" in record.info.synthetic
    assert store.get("emb") == record == store.get("emb:latest")
    assert [r.name for r in store.list()] == ["emb:latest"]
    assert not store.is_empty()


def test_same_file_twice_shares_one_blob(tmp_path: Path) -> None:
    store = Registry(tmp_path)
    a = store.import_file(models.model_file(models.EMBED), "a")
    b = store.import_file(models.model_file(models.EMBED), "b:v2")
    assert a.path == b.path
    assert len(list((tmp_path / "blobs").iterdir())) == 1


def test_unknown_and_invalid_names_are_not_found(tmp_path: Path) -> None:
    store = Registry(tmp_path)
    with pytest.raises(ModelNotFound):
        store.get("nope")
    with pytest.raises(ModelNotFound):
        store.get("../../etc/passwd")


def test_non_gguf_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    with pytest.raises(InvalidRequest, match="not a GGUF"):
        Registry(tmp_path).import_file(junk, "junk")


def _onnx(tmp_path: Path, content: bytes) -> Path:
    """The registry reads nothing inside an ONNX file (the engine does): any bytes do."""
    path = tmp_path / f"m-{len(content)}.onnx"
    path.write_bytes(content)
    return path


def test_a_tensor_model_keeps_numbered_versions(tmp_path: Path) -> None:
    store = Registry(tmp_path / "home")
    first = store.import_path(_onnx(tmp_path, b"one"), "m")
    second = store.import_path(_onnx(tmp_path, b"two!"), "m")
    assert (first.name, second.name) == ("m:1", "m:2")
    assert store.get("m") == second == store.get("m:latest")  # the newest
    assert store.get("m:1") == first
    again = store.import_path(_onnx(tmp_path, b"two!"), "m")
    assert again == second, "the same files again make no new version"
    assert [r.tag for r in store.versions("m")] == ["1", "2"]
    assert {r.name: r.default for r in store.list()} == {"m:1": False, "m:2": True}


def test_a_marked_default_outlives_newer_versions(tmp_path: Path) -> None:
    store = Registry(tmp_path / "home")
    store.import_path(_onnx(tmp_path, b"one"), "m")
    store.import_path(_onnx(tmp_path, b"two!"), "m")
    assert store.set_default("m:1").name == "m:1"
    assert store.get("m").name == "m:1"
    third = store.import_path(_onnx(tmp_path, b"three"), "m")
    assert third.name == "m:3" and store.get("m").name == "m:1"
    assert {r.name for r in store.list() if r.default} == {"m:1"}
    assert store.clear_default("m").name == "m:3"
    store.set_default("m:2")
    store.remove("m:2")  # the mark goes with the version
    assert store.get("m").name == "m:3"


def test_a_bare_name_with_versions_is_not_removed_by_guess(tmp_path: Path) -> None:
    store = Registry(tmp_path / "home")
    store.import_path(_onnx(tmp_path, b"one"), "m")
    store.import_path(_onnx(tmp_path, b"two!"), "m")
    with pytest.raises(InvalidRequest, match="m:1, m:2"):
        store.remove("m")
    assert [r.name for r in store.list()] == ["m:1", "m:2"]


def test_explicit_tags_and_llms_are_not_numbered(tmp_path: Path) -> None:
    store = Registry(tmp_path / "home")
    assert store.import_path(_onnx(tmp_path, b"one"), "m:v9").name == "m:v9"
    assert store.get("m").name == "m:v9"  # the only version is the default
    gguf = models.model_file(models.EMBED)
    assert store.import_file(gguf, "emb").name == "emb:latest"
    assert store.import_file(gguf, "emb").name == "emb:latest"  # replaced, as Ollama does
    store.import_file(gguf, "emb:q8")
    assert store.get("emb").name == "emb:latest"
    with pytest.raises(InvalidRequest, match="emb:latest is a model itself"):
        store.set_default("emb:q8")
    with pytest.raises(ModelNotFound):
        store.set_default("m:nope")
