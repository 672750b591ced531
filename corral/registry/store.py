"""The installed models: content-addressed blobs plus one small JSON manifest per name.

Layout under ``CORRAL_HOME``::

    blobs/sha256-<hex>                  model files, named by content
    models/<name>/<tag>.json            manifest: file, size, sha256, header facts

Names are Ollama style, ``name:tag`` with ``latest`` as the default tag. Two names
can share one blob (``corral cp`` later), and an import of a file already present
still costs one copy but no second blob. This is the seam the full registry (SQLite, versions,
pulling) replaces; everything outside ``corral.registry`` sees only ``ModelStore``
and ``ModelRecord``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from corral.errors import InvalidRequest, ModelNotFound
from corral.registry.gguf_info import ModelInfo, is_gguf, read_gguf_info

DEFAULT_TAG = "latest"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_CHUNK = 4 << 20


class InvalidModelName(InvalidRequest):
    """A model name that is not ``name[:tag]`` with safe characters."""


@dataclass(frozen=True)
class ModelRecord:
    name: str  # canonical "name:tag"
    path: Path
    size: int
    sha256: str
    created: float
    info: ModelInfo

    @property
    def capabilities(self) -> list[str]:
        return ["embeddings"] if self.info.embedding else ["completion", "chat"]


def canonical_name(name: str) -> str:
    """``demo`` -> ``demo:latest``; validates characters so names are safe as paths."""
    base, _, tag = name.strip().partition(":")
    tag = tag or DEFAULT_TAG
    if not _NAME.match(base) or ".." in base.split("/") or not _TAG.match(tag):
        raise InvalidModelName(
            f"Invalid model name {name!r}: use name[:tag] with letters, digits, '.', '_', "
            "'-' (and '/' in the name).",
            param="model",
        )
    return f"{base}:{tag}"


class ModelStore:
    def __init__(self, home: Path) -> None:
        self.models_dir = home / "models"
        self.blobs_dir = home / "blobs"
        # Manifests read, keyed by path, with the mtime they had: `get` is on every
        # request, and a stat is far cheaper than reading and parsing JSON.
        self._cache: dict[Path, tuple[int, ModelRecord]] = {}

    def _manifest_path(self, name: str) -> Path:
        base, _, tag = name.partition(":")
        return self.models_dir / base / f"{tag}.json"

    def get(self, name: str) -> ModelRecord:
        """The model called ``name`` (tag defaults to ``latest``), or ModelNotFound."""
        try:
            canonical = canonical_name(name)
        except InvalidModelName:
            raise ModelNotFound(name) from None
        path = self._manifest_path(canonical)
        try:
            mtime = path.stat().st_mtime_ns
            cached = self._cache.get(path)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            record = self._record(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelNotFound(name) from None
        self._cache[path] = (mtime, record)
        return record

    def list(self) -> list[ModelRecord]:
        records = []
        for path in sorted(self.models_dir.rglob("*.json")):
            try:
                records.append(self._record(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError):
                continue  # a half-written or foreign file is not a model
        return records

    def is_empty(self) -> bool:
        return not any(self.models_dir.rglob("*.json")) if self.models_dir.exists() else True

    def _record(self, data: dict[str, object]) -> ModelRecord:
        return ModelRecord(
            name=str(data["name"]),
            path=self.blobs_dir / str(data["blob"]),
            size=int(str(data["size"])),
            sha256=str(data["sha256"]),
            created=float(str(data["created"])),
            info=ModelInfo.from_dict(data["info"]),  # type: ignore[arg-type]
        )

    def import_file(self, source: Path, name: str) -> ModelRecord:
        """Add a local GGUF file under ``name`` (replacing an existing name)."""
        canonical = canonical_name(name)
        if not source.is_file():
            raise InvalidRequest(f"No such file: {source}")
        if not is_gguf(source):
            raise InvalidRequest(f"{source} is not a GGUF file (bad magic bytes).")
        info = read_gguf_info(source)
        digest, size = self._add_blob(source)
        manifest = {
            "name": canonical,
            "blob": f"sha256-{digest}",
            "size": size,
            "sha256": digest,
            "created": time.time(),
            "source": str(source.resolve()),
            "info": info.to_dict(),
        }
        path = self._manifest_path(canonical)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(path)
        return self._record(manifest)

    def _add_blob(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` into the blob store, hashing as it goes; return (sha256, size).

        A copy, not a hard link: with a link, editing or truncating the original file
        would silently change the installed model (seen in this project's own tests).
        """
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs_dir / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
        try:
            digest = _copy_hashing(source, tmp)
            size = tmp.stat().st_size
            blob = self.blobs_dir / f"sha256-{digest}"
            if blob.exists():
                tmp.unlink()
            else:
                tmp.replace(blob)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size


def _copy_hashing(source: Path, dest: Path) -> str:
    h = hashlib.sha256()
    with source.open("rb") as src, dest.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, dest)
    return h.hexdigest()
