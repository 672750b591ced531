"""A model file sent over HTTP (the dashboard's drag and drop), streamed to disk.

The body is written to ``downloads/`` as it arrives, hashed on the way, so a
multi-GB file never sits in memory; the import then checks it is a model Corral can
serve and stores it under its sha256 like any other file. A client that goes away, a
full disk or a file that is not a model leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from corral.errors import DiskFull, InvalidRequest
from corral.registry.records import ModelRecord
from corral.registry.store import Registry

SUFFIXES = (".gguf", ".onnx")  # a single file is one of these; directories come by path


@dataclass(frozen=True)
class Uploaded:
    record: ModelRecord
    sha256: str
    size: int


def checked_filename(filename: str) -> str:
    """The bare file name, refused unless it names a single-file model format."""
    base = Path(filename).name
    if not base or base != filename or base.startswith("."):
        raise InvalidRequest(f"Upload a file by its bare name, not {filename!r}.", param="filename")
    if not base.lower().endswith(SUFFIXES):
        raise InvalidRequest(
            f"{base}: upload a .gguf or .onnx file (a model directory is imported by path).",
            param="filename",
        )
    return base


def staging_path(registry: Registry, filename: str) -> Path:
    """Where an upload's bytes go while they arrive: its own folder, so the import sees
    the file under the name the user gave it."""
    folder = registry.home / "downloads" / f"upload-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / filename


async def receive_file(chunks: AsyncIterator[bytes], dest: Path) -> tuple[str, int]:
    """Write ``chunks`` to ``dest``, hashing as they come; return (sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as f:
        async for chunk in chunks:
            if chunk:
                _write(f, chunk, size)
                digest.update(chunk)
                size += len(chunk)
    if size == 0:
        raise InvalidRequest("The upload is empty.", param="file")
    return digest.hexdigest(), size


def _write(f: BinaryIO, chunk: bytes, so_far: int) -> None:
    try:
        f.write(chunk)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(
                f"The disk is full after {so_far:,} bytes of the upload; nothing was kept."
            ) from None
        raise


def import_upload(registry: Registry, staged: Path, name: str | None) -> ModelRecord:
    """Register the staged file (its name, or the one its file name gives, as for any
    import), recorded as an upload rather than by its staging path."""
    return registry.import_path(staged, name, source_label=f"upload:{staged.name}")


def discard(staged: Path) -> None:
    staged.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: not ours to remove
        staged.parent.rmdir()
