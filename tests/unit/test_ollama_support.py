"""The pieces around the Ollama translation: pull progress lines, the GGUF header
reader behind /api/show, and the parsing of a worker's events and errors."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from corral.api.ollama_pull import finish_lines, progress_line
from corral.errors import ContextLengthExceeded, EngineError, InvalidRequest, WorkerUnavailable
from corral.registry.gguf_header import read_metadata
from corral.registry.pulls import PullStatus
from corral.registry.records import ModelFile
from corral.service.worker_client import _sse_data, worker_error
from tests.support import models

SHA = "ab" * 32


def job(**fields: object) -> PullStatus:
    base: dict[str, object] = {
        "id": "j",
        "ref": "hf.co/o/r",
        "name": "hf.co/o/r:latest",
        "state": "running",
        "bytes_done": 10,
        "bytes_total": 100,
        "rate": 0.0,
        "error": None,
        "created_at": 0.0,
        "finished_at": None,
    }
    return PullStatus(**{**base, **fields})  # type: ignore[arg-type]


def test_pull_progress_is_per_file_with_ollamas_digest() -> None:
    assert progress_line(job()) is None  # resolving: no file yet
    assert progress_line(job(file="m.gguf", file_sha256=SHA, file_size=100, file_done=40)) == {
        "status": f"pulling {SHA[:12]}",
        "digest": f"sha256:{SHA}",
        "total": 100,
        "completed": 40,
    }
    assert progress_line(job(file="README.md", file_done=3)) == {
        "status": "pulling README.md",
        "digest": "README.md",
        "completed": 3,
    }


def test_pull_ends_with_success_or_the_error() -> None:
    files = (ModelFile("m.gguf", SHA, 100),)
    assert finish_lines(job(state="completed"), files) == [
        {"status": f"pulling {SHA[:12]}", "digest": f"sha256:{SHA}", "total": 100,
         "completed": 100},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]  # fmt: skip
    assert finish_lines(job(state="failed", error="hf.co/o/r: not found"), ()) == [
        {"error": "hf.co/o/r: not found"}
    ]
    assert finish_lines(job(state="cancelled"), ()) == [{"error": "pull cancelled"}]


@pytest.mark.parametrize("spec", [models.CHAT, models.RAW, models.EMBED])
def test_gguf_header_reads_what_the_gguf_package_reads(spec: models.SyntheticSpec) -> None:
    path = models.model_file(spec)
    expected = {
        name: field.contents()
        for name, field in gguf.GGUFReader(str(path)).fields.items()
        if not name.startswith("GGUF.")
    }
    got = read_metadata(path, max_array=10**9)
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name] == (pytest.approx(value) if isinstance(value, float) else value), name
    short = read_metadata(path)
    assert short["tokenizer.ggml.tokens"] == []  # long arrays are skipped, as Ollama does
    assert short["general.architecture"] == "llama"


def test_gguf_header_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF"):
        read_metadata(bad)
    path = models.model_file(models.CHAT)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated"):
        read_metadata(cut)


def test_sse_events_are_parsed_and_error_events_raised() -> None:
    assert _sse_data(b'data: {"choices": []}') == {"choices": []}
    assert _sse_data(b"data: [DONE]") is None
    assert _sse_data(b": keep-alive") is None
    with pytest.raises(ContextLengthExceeded, match="too long"):
        _sse_data(b'data: {"error": {"message": "too long", "code": "context_length_exceeded"}}')


def test_worker_errors_keep_their_meaning() -> None:
    body = b'{"error": {"message": "bad temperature", "type": "x", "param": "temperature"}}'
    error = worker_error(400, body)
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert (error.message, error.param) == ("bad temperature", "temperature")
    assert isinstance(worker_error(503, b'{"error": {"message": "busy"}}'), WorkerUnavailable)
    odd = worker_error(500, b"<html>oops</html>")
    assert isinstance(odd, EngineError) and "oops" in odd.message
