"""The multipart upload reader: lines split right across chunks, long lines bounded."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from corral.batch import files as files_module
from corral.batch.files import FileStore
from corral.batch.upload import receive_upload
from corral.errors import InvalidRequest
from corral.registry.store import Registry

pytestmark = pytest.mark.anyio
BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(parts: list[tuple[str, bytes, bool]]) -> bytes:
    """(name, value, is_file) parts as one multipart body."""
    out = b""
    for name, value, is_file in parts:
        filename = '; filename="f.jsonl"' if is_file else ""
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'
        ).encode()
        out += value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [1, 7, 4096])
async def test_lines_are_the_same_however_the_bytes_are_chunked(tmp_path: Path, size: int) -> None:
    content = b"first\r\n" + b"y" * 10_000 + b"\n\nlast without newline"
    seen: list[bytes] = []

    def on_line(line: bytes, fields: Mapping[str, str]) -> None:
        seen.append(line)

    body = chunked(multipart([("purpose", b"batch", False), ("file", content, True)]), size)
    upload = await receive_upload(
        CONTENT_TYPE, body, tmp_path / "f", limit=1 << 20, on_line=on_line
    )
    assert seen == [b"first", b"y" * 10_000, b"", b"last without newline"]
    assert upload.bytes == len(content) and (tmp_path / "f").read_bytes() == content


async def test_a_line_over_the_limit_stops_the_upload_at_that_line(tmp_path: Path) -> None:
    content = b"short\n" + b"z" * 100_000  # the second line never ends
    body = chunked(multipart([("file", content, True)]), 1024)
    with pytest.raises(InvalidRequest, match="Line 2 of the file is longer than 50,000 bytes"):
        await receive_upload(CONTENT_TYPE, body, tmp_path / "f", limit=1 << 20, max_line=50_000)
    assert not (tmp_path / "f").exists()


async def test_a_file_before_its_purpose_is_checked_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path)
    store = FileStore(registry.engine, tmp_path / "files", 1 << 20)
    threads: list[threading.Thread] = []
    check = files_module._check_file

    def recording_check(path: Path, checker: object) -> None:
        threads.append(threading.current_thread())
        check(path, checker)  # type: ignore[arg-type]

    monkeypatch.setattr(files_module, "_check_file", recording_check)
    line = (
        b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
        b'"body": {"model": "m", "input": "x"}}\n'
    )
    body = chunked(multipart([("file", line, True), ("purpose", b"batch", False)]), 64)
    row = await store.upload(CONTENT_TYPE, body)
    assert row.lines == 1
    assert threads and threads[0] is not threading.main_thread()
    registry.close()


async def test_a_malformed_multipart_body_is_the_clients_error(tmp_path: Path) -> None:
    body = chunked(f"--{BOUNDARY}\r\n[]--{BOUNDARY}--\r\n".encode(), 64)
    with pytest.raises(InvalidRequest, match="multipart/form-data body is malformed"):
        await receive_upload(CONTENT_TYPE, body, tmp_path / "f", limit=1 << 20)
    assert not (tmp_path / "f").exists()
