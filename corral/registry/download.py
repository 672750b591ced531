"""Fetch one file into a resume file, verifying it, surviving drops and restarts.

The resume file (``downloads/<key>.partial``) is the only state: whatever bytes it
holds were written by an earlier attempt, so a new attempt hashes them (no network)
and asks the server for the rest with a ``Range`` request. A server that ignores the
range, or whose file changed (``If-Range`` with the first attempt's ETag), answers
200 and the file starts over. A dropped connection retries from the bytes on disk
with backoff; cancellation is checked between chunks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx

from corral.errors import ChecksumMismatch, DiskFull, DownloadError, SourceFileMissing
from corral.registry.access import failure_detail
from corral.registry.resolve import RemoteFile

CHUNK = 1 << 20
RETRIES = 5
Progress = Callable[[int], None]  # called with bytes newly on disk


class Cancelled(Exception):
    """The pull was cancelled (or the server is stopping); the resume file stays."""


def fetch(
    remote: RemoteFile,
    partial: Path,
    *,
    headers: dict[str, str],
    progress: Progress,
    cancel: threading.Event,
    client: httpx.Client,
) -> str:
    """Complete ``partial`` from ``remote``; return the verified sha256 of its bytes.
    ``client`` decides where requests may go (``PullGuard.client``: each redirect is
    checked like the first request)."""
    if remote.local is not None:
        return _copy_local(remote, partial, progress, cancel)
    attempt = 0
    while True:
        digest = _hash_existing(partial, cancel)
        have = partial.stat().st_size if partial.exists() else 0
        if have:
            progress(have)
        if remote.size is not None and have == remote.size:
            break
        try:
            digest = _stream(remote, partial, digest, have, headers, progress, cancel, client)
            break
        except (httpx.TransportError, _ShortRead) as exc:
            attempt += 1
            if attempt > RETRIES:
                raise DownloadError(
                    f"{remote.path}: the connection kept failing "
                    f"({failure_detail(remote.url, exc)}); {_size_of(partial)} "
                    "are kept and the next pull resumes from there."
                ) from None
            progress(-(partial.stat().st_size if partial.exists() else 0))
            time.sleep(min(0.2 * 2**attempt, 5.0))
    return _verify(remote, partial, digest.hexdigest())


class _ShortRead(Exception):
    pass


def _stream(
    remote: RemoteFile,
    partial: Path,
    digest: hashlib._Hash,
    have: int,
    headers: dict[str, str],
    progress: Progress,
    cancel: threading.Event,
    client: httpx.Client,
) -> hashlib._Hash:
    request_headers = dict(headers)
    if have:
        request_headers["Range"] = f"bytes={have}-"
        if remote.etag:
            request_headers["If-Range"] = remote.etag
    with client.stream("GET", remote.url, headers=request_headers) as response:
        if response.status_code == 416 and have:
            partial.unlink()  # our bytes are longer than the file: start again
            raise _ShortRead("range not satisfiable")
        if response.status_code >= 400:
            error = SourceFileMissing if response.status_code == 404 else DownloadError
            raise error(f"{remote.path}: {remote.url} answered {response.status_code}")
        mode = "ab"
        if have and response.status_code != 206:
            progress(-have)  # the server sent the whole file: start over
            digest = hashlib.sha256()
            mode = "wb"
        try:
            with partial.open(mode) as f:
                # As received, not re-chunked: a drop loses no byte that arrived.
                _write(response.iter_bytes(), f, digest, progress, cancel)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(
                    f"{remote.path}: the disk is full ({_size_of(partial)} downloaded and "
                    "kept). Free some space and pull again to resume."
                ) from None
            raise
    got = partial.stat().st_size
    if remote.size is not None and got < remote.size:
        raise _ShortRead(f"got {got} of {remote.size} bytes")
    return digest


def _write(
    chunks: Iterator[bytes],
    f: IO[bytes],
    digest: hashlib._Hash,
    progress: Progress,
    cancel: threading.Event,
) -> None:
    """Append, hash and count each chunk, checking for cancellation; then fsync."""
    for chunk in chunks:
        if cancel.is_set():
            raise Cancelled()
        f.write(chunk)
        digest.update(chunk)
        progress(len(chunk))
    f.flush()
    os.fsync(f.fileno())


def _hash_existing(partial: Path, cancel: threading.Event) -> hashlib._Hash:
    digest = hashlib.sha256()
    if partial.exists():
        with partial.open("rb") as f:
            while chunk := f.read(4 * CHUNK):
                if cancel.is_set():
                    raise Cancelled()
                digest.update(chunk)
    return digest


def _verify(remote: RemoteFile, partial: Path, digest: str) -> str:
    size = partial.stat().st_size
    if remote.size is not None and size != remote.size:
        partial.unlink()
        raise DownloadError(f"{remote.path}: expected {remote.size} bytes, got {size}.")
    if remote.sha256 is not None and digest != remote.sha256:
        partial.unlink()
        raise ChecksumMismatch(remote.path, remote.sha256, digest)
    if remote.git_sha1 is not None:
        git = _git_blob_sha1(partial)
        if git != remote.git_sha1:
            partial.unlink()
            raise ChecksumMismatch(remote.path, remote.git_sha1, git, kind="git blob sha1")
    return digest


def _git_blob_sha1(path: Path) -> str:
    """How git (and so the Hub) names a small file: sha1 of a header plus the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(4 * CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_local(
    remote: RemoteFile, partial: Path, progress: Progress, cancel: threading.Event
) -> str:
    assert remote.local is not None
    digest = hashlib.sha256()
    with remote.local.open("rb") as src, partial.open("wb") as dst:
        _write(iter(lambda: src.read(4 * CHUNK), b""), dst, digest, progress, cancel)
    shutil.copystat(remote.local, partial)
    return _verify(remote, partial, digest.hexdigest())


def _size_of(path: Path) -> str:
    from corral.units import format_size

    return format_size(path.stat().st_size if path.exists() else 0)
