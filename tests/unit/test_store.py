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
