"""The installed models: content-addressed blobs on disk, facts in the registry database.

Layout under ``CORRAL_HOME``::

    registry.db                         models, files, aliases, pull jobs (SQLite)
    blobs/sha256-<hex>                  file contents, named by their hash
    models/<name>/<tag>/...             a multi-file model's tree, as links to blobs

A blob belongs to every model that lists it; ``remove`` deletes a blob only once no
model refers to it, so ``corral cp`` and two quants sharing a tokenizer cost no
second copy. Everything outside ``corral.registry`` sees only ``Registry`` and the
frozen ``ModelRecord`` it hands out.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from corral.errors import CorralError, InvalidRequest, ModelExists, ModelNotFound
from corral.registry import formats
from corral.registry.access import ImportDirs, allowed_path, directory_files
from corral.registry.db import AliasRow, DefaultRow, FileRow, ModelRow, open_database
from corral.registry.gguf_info import ModelInfo, is_gguf
from corral.registry.names import (
    DEFAULT_TAG,
    canonical_name,
    canonical_or_not_found,
)
from corral.registry.records import ModelFile, ModelRecord
from corral.registry.refs import parse_reference

__all__ = [
    "DEFAULT_TAG",
    "Registry",
    "canonical_name",
]

log = logging.getLogger("corral.registry")
_CHUNK = 4 << 20
_CACHE_SECONDS = 2.0  # how stale a cached record may be when another process writes
USAGE_FLUSH_SECONDS = 30.0  # how often the server writes last-used times


class Registry:
    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self.home = home
        self.blobs_dir = home / "blobs"
        self.models_dir = home / "models"
        home.mkdir(parents=True, exist_ok=True)
        self.engine = open_database(database_url or f"sqlite:///{home / 'registry.db'}")
        # Registration and removal are serialised in this process, so a removal never
        # deletes a blob that a registration is about to refer to.
        self._write_lock = threading.RLock()
        self._cache: dict[str, tuple[float, ModelRecord]] = {}
        self._usage: dict[str, float] = {}
        self._import_legacy_manifests()

    # --- reading ------------------------------------------------------------------------

    def get(self, name: str) -> ModelRecord:
        """The model called ``name`` or aliased so. A bare name (tag ``latest``) with no
        model of that tag means its default version: the one marked so, else the newest."""
        canonical = canonical_or_not_found(name)
        now = time.monotonic()
        cached = self._cache.get(canonical)
        if cached is not None and cached[0] > now:
            return cached[1]
        with Session(self.engine, expire_on_commit=False) as session:
            row = self._find(session, canonical) or self._default_version(session, canonical)
            if row is None:
                raise ModelNotFound(name, self._similar(session, name))
            record = replace(self._record(row), default=self._means_bare(session, row))
        self._cache[canonical] = (now + _CACHE_SECONDS, record)
        return record

    def list(self) -> list[ModelRecord]:
        """Every model, each version its own record; ``default`` marks what each bare
        name means."""
        with Session(self.engine, expire_on_commit=False) as session:
            rows = session.scalars(
                select(ModelRow)
                .options(selectinload(ModelRow.files), selectinload(ModelRow.aliases))
                .order_by(ModelRow.name)
            ).all()
            marked = {
                base: model_id
                for base, model_id in session.execute(select(DefaultRow.base, DefaultRow.model_id))
            }
            records = [self._record(row) for row in rows]
        defaults = _defaults(records, {r.id: r.name for r in rows}, marked)
        return [replace(r, default=r.name in defaults) for r in records]

    def versions(self, name: str) -> builtins.list[ModelRecord]:
        """The versions (tags) of ``name``'s base, oldest first."""
        base = canonical_or_not_found(name).rpartition(":")[0]
        found = [r for r in self.list() if r.base == base]
        if not found:
            raise ModelNotFound(name)
        return sorted(found, key=lambda r: (r.created, r.name))

    def is_empty(self) -> bool:
        with Session(self.engine, expire_on_commit=False) as session:
            return not session.scalar(select(func.count()).select_from(ModelRow))

    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / f"sha256-{sha256}"

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256)
        try:
            return size is None or path.stat().st_size == size
        except FileNotFoundError:
            return False

    # --- adding -------------------------------------------------------------------------

    def import_path(
        self,
        source: Path,
        name: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        import_dirs: ImportDirs = None,
        source_label: str | None = None,
    ) -> ModelRecord:
        """Add a local GGUF or ONNX file, or a model directory (safetensors/ONNX); the
        name defaults to the one ``corral pull PATH`` would give it. ``import_dirs``:
        the directories the source (links resolved) must be in, checked before anything
        is read (the API's callers); None: anywhere. ``source_label`` is recorded as the
        source instead of the path (a file made for the import and deleted after it)."""
        given = str(source)
        source = source.expanduser()
        if import_dirs is not None:
            source = allowed_path(source, import_dirs, given=given)
        canonical = (
            canonical_name(name) if name else parse_reference(str(source.resolve())).default_name
        )
        if source.is_dir():
            files = directory_files(source, import_dirs)
        elif source.is_file():
            if source.suffix == ".gguf" and not is_gguf(source):
                raise InvalidRequest(f"{source} is not a GGUF file (bad magic bytes).")
            files = {source.name: source}
        else:
            raise InvalidRequest(f"No such file or directory: {source}")
        try:
            fmt = formats.detect_format(files)
            formats.read_info(files, fmt)  # refuse a broken file before copying it
        except (ValueError, KeyError, OSError) as exc:
            raise InvalidRequest(f"{source} is not a model Corral can serve: {exc}") from None
        added = [ModelFile(rel, *self.add_blob(path)) for rel, path in files.items()]
        return self.register(
            canonical,
            added,
            source=source_label or str(source.resolve()),
            revision=None,
            params=params,
        )

    def import_file(
        self, source: Path, name: str, *, source_label: str | None = None
    ) -> ModelRecord:
        """Add one local GGUF file."""
        if source.is_file() and not is_gguf(source):
            raise InvalidRequest(f"{source} is not a GGUF file (bad magic bytes).")
        return self.import_path(source, name, source_label=source_label)

    def add_blob(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` into the blob store, hashing as it goes; return (sha256, size).

        A copy, not a hard link: with a link, editing or truncating the original file
        would silently change the installed model (seen in this project's own tests).
        """
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs_dir / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
        try:
            digest = _copy_hashing(source, tmp)
            size = tmp.stat().st_size
            self.adopt_blob(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def adopt_blob(self, path: Path, sha256: str) -> Path:
        """Move a verified file into the store under its hash (a no-op if present)."""
        blob = self.blob_path(sha256)
        if blob.exists():
            path.unlink(missing_ok=True)
        else:
            blob.parent.mkdir(parents=True, exist_ok=True)
            path.replace(blob)
        return blob

    def register(
        self,
        name: str,
        files: Iterable[ModelFile],
        *,
        source: str,
        revision: str | None,
        params: Mapping[str, Any] | None = None,
        engine: str | None = None,
        replace: bool = True,
    ) -> ModelRecord:
        """Record a model whose files are all in the blob store: the commit point of an
        import or a pull. Nothing is registered unless every blob is present."""
        canonical = canonical_name(name)
        files = list(files)
        params, engine = _split_engine(params, engine)
        with self._write_lock:
            for f in files:
                if not self.has_blob(f.sha256, f.size):
                    raise InvalidRequest(f"{f.path}: blob sha256-{f.sha256[:12]} is missing")
            paths = {f.path: self.blob_path(f.sha256) for f in files}
            fmt = formats.detect_format(paths)
            info = formats.read_info(paths, fmt)
            primary = formats.primary_file(paths, fmt)
            old_blobs: set[str] = set()
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                if fmt in formats.VERSIONED_FORMATS and canonical.endswith(f":{DEFAULT_TAG}"):
                    newest = self._newest(session, canonical.rpartition(":")[0])
                    if newest is not None and _same_model(newest, files, params, engine):
                        return self._record(newest)  # a repeated import or sync: no new version
                    canonical = self._next_version(session, canonical.rpartition(":")[0])
                existing = session.scalar(select(ModelRow).where(ModelRow.name == canonical))
                if existing is not None:
                    if not replace:
                        raise ModelExists(canonical)
                    old_blobs = {f.sha256 for f in existing.files}
                    session.delete(existing)
                    session.flush()
                self._check_not_alias(session, canonical)
                session.add(
                    ModelRow(
                        name=canonical,
                        format=fmt,
                        engine=engine,
                        architecture=info.architecture,
                        parameters=info.parameters,
                        quantization=info.quantization,
                        context_length=info.context_length,
                        has_chat_template=info.has_chat_template,
                        embedding=info.embedding,
                        info=info.to_dict(),
                        source=source,
                        revision=revision,
                        params=params,
                        primary_file=primary,
                        created_at=time.time(),
                        last_used_at=None,
                        files=[FileRow(path=f.path, sha256=f.sha256, size=f.size) for f in files],
                    )
                )
            self._invalidate()
            self._materialize(canonical, files)
            self._collect(old_blobs)
        return self.get(canonical)

    # --- names --------------------------------------------------------------------------

    def set_default(self, name: str) -> ModelRecord:
        """Make the version ``name`` (``iris:2``) what its bare name means."""
        canonical = canonical_or_not_found(name)
        base = canonical.rpartition(":")[0]
        with self._writing() as session:
            row = self._row(session, canonical)
            latest = session.scalar(select(ModelRow.id).where(ModelRow.name == f"{base}:latest"))
            if latest is not None and latest != row.id:
                raise InvalidRequest(
                    f"{base}:{DEFAULT_TAG} is a model itself: the bare name {base!r} means it. "
                    "Copy the version to that tag instead (corral cp)."
                )
            mark = session.get(DefaultRow, base)
            if mark is None:
                session.add(DefaultRow(base=base, model_id=row.id))
            else:
                mark.model_id = row.id
        self._invalidate()
        return self.get(canonical)

    def clear_default(self, name: str) -> ModelRecord:
        """Let ``name``'s bare name mean its newest version again; that version."""
        base = canonical_or_not_found(name).rpartition(":")[0]
        with self._writing() as session:
            mark = session.get(DefaultRow, base)
            if mark is not None:
                session.delete(mark)
        self._invalidate()
        return self.get(base)

    def copy(self, source: str, destination: str) -> ModelRecord:
        """A second, independent name for the same files (Ollama's ``cp``)."""
        record = self.get(source)
        dest = canonical_name(destination)
        if dest == record.name:
            raise InvalidRequest("Source and destination are the same model.")
        return self.register(
            dest,
            record.files,
            source=record.source,
            revision=record.revision,
            params=record.params,
            engine=record.engine,
            replace=False,
        )

    def set_aliases(self, name: str, aliases: Iterable[str]) -> ModelRecord:
        """Make ``aliases`` exactly the other names of model ``name``."""
        canonical = canonical_name(name)
        wanted = sorted({canonical_name(a) for a in aliases})
        with self._writing() as session:
            row = self._row(session, canonical)
            for alias in wanted:
                if session.scalar(select(ModelRow.id).where(ModelRow.name == alias)):
                    raise InvalidRequest(f"Alias {alias!r} is already a model's name.")
                other = session.get(AliasRow, alias)
                if other is not None and other.model_id != row.id:
                    raise InvalidRequest(f"Alias {alias!r} already names another model.")
            row.aliases = [AliasRow(alias=a) for a in wanted]
        self._invalidate()
        return self.get(canonical)

    def configure(
        self, name: str, *, params: Mapping[str, Any], aliases: Iterable[str]
    ) -> ModelRecord:
        """Set a model's engine, engine parameters and aliases (what ``corral sync``
        declares); ``params["engine"]``, if present, names the engine."""
        canonical = canonical_name(name)
        params, engine = _split_engine(params, None)
        with self._writing() as session:
            row = self._row(session, canonical)
            row.params, row.engine = params, engine
        self._invalidate()
        return self.set_aliases(canonical, aliases)

    # --- removing -----------------------------------------------------------------------

    def remove(self, name: str) -> builtins.list[str]:
        """Remove a model (with its aliases) or just an alias; returns the names removed.

        Blobs no other model lists are deleted; shared ones stay.
        """
        canonical = canonical_or_not_found(name)
        with self._write_lock:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                alias = session.get(AliasRow, canonical)
                if alias is not None:
                    session.delete(alias)
                    removed, blobs = [canonical], set()
                else:
                    row = self._removable(session, name, canonical)
                    removed = [row.name, *(a.alias for a in row.aliases)]
                    blobs = {f.sha256 for f in row.files}
                    session.delete(row)
            self._invalidate()
            if alias is None:
                self._unmaterialize(removed[0])
            self._collect(blobs)
        return removed

    def _collect(self, candidates: set[str]) -> None:
        """Delete the blobs among ``candidates`` that no model lists any more."""
        if not candidates:
            return
        with Session(self.engine, expire_on_commit=False) as session:
            used = set(
                session.scalars(select(FileRow.sha256).where(FileRow.sha256.in_(candidates)))
            )
        for sha in candidates - used:
            self.blob_path(sha).unlink(missing_ok=True)
            log.info("deleted blob sha256-%s (no model uses it)", sha[:12])

    # --- usage --------------------------------------------------------------------------

    def touch(self, name: str) -> None:
        """Note a use of ``name`` in memory; ``flush_usage`` writes them (the server does
        every ``USAGE_FLUSH_SECONDS``, off the event loop): no write per request."""
        self._usage[name] = time.time()

    def flush_usage(self) -> None:
        pending, self._usage = self._usage, {}
        if not pending:
            return
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            for row in session.scalars(select(ModelRow).where(ModelRow.name.in_(pending))):
                row.last_used_at = pending[row.name]
        self._invalidate()

    def close(self) -> None:
        self.flush_usage()
        self.engine.dispose()

    # --- helpers ------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """One transaction, serialised with this process's other registry writes."""
        with (
            self._write_lock,
            Session(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @staticmethod
    def _similar(session: Session, name: str) -> tuple[str, ...]:
        """Installed names close to ``name``, for a "did you mean"."""
        bare = {n.removesuffix(":latest"): n for n in session.scalars(select(ModelRow.name))}
        close = difflib.get_close_matches(name.removesuffix(":latest"), bare.keys(), n=1)
        return tuple(bare[c] for c in close)

    def _row(self, session: Session, canonical: str) -> ModelRow:
        row = session.scalar(select(ModelRow).where(ModelRow.name == canonical))
        if row is None:
            raise ModelNotFound(canonical)
        return row

    def _find(self, session: Session, canonical: str) -> ModelRow | None:
        """By name, else by alias: one query either way."""
        aliased = select(AliasRow.model_id).where(AliasRow.alias == canonical).scalar_subquery()
        query = (
            select(ModelRow)
            .where((ModelRow.name == canonical) | (ModelRow.id == aliased))
            .options(joinedload(ModelRow.files), joinedload(ModelRow.aliases))
        )
        return session.scalars(query).unique().first()

    def _versions_query(self, base: str) -> Select[Any]:
        return select(ModelRow).where(ModelRow.name.startswith(f"{base}:", autoescape=True))

    def _newest(self, session: Session, base: str) -> ModelRow | None:
        query = self._versions_query(base).order_by(ModelRow.created_at.desc(), ModelRow.id.desc())
        return session.scalars(query.options(joinedload(ModelRow.files))).unique().first()

    def _next_version(self, session: Session, base: str) -> str:
        tags = [row.name.rpartition(":")[2] for row in session.scalars(self._versions_query(base))]
        return f"{base}:{max((int(t) for t in tags if t.isdigit()), default=0) + 1}"

    def _default_version(self, session: Session, canonical: str) -> ModelRow | None:
        """What a bare name means when no model has the tag ``latest``."""
        base, _, tag = canonical.rpartition(":")
        if tag != DEFAULT_TAG:
            return None
        mark = session.get(DefaultRow, base)
        if mark is not None:
            return self._find_id(session, mark.model_id)
        return self._newest(session, base)

    def _means_bare(self, session: Session, row: ModelRow) -> bool:
        """Whether ``row`` is what its bare name means."""
        base, _, tag = row.name.rpartition(":")
        if tag == DEFAULT_TAG:
            return True
        if session.scalar(select(ModelRow.id).where(ModelRow.name == f"{base}:{DEFAULT_TAG}")):
            return False
        chosen = self._default_version(session, f"{base}:{DEFAULT_TAG}")
        return chosen is not None and chosen.id == row.id

    def _find_id(self, session: Session, model_id: int) -> ModelRow | None:
        query = (
            select(ModelRow)
            .where(ModelRow.id == model_id)
            .options(joinedload(ModelRow.files), joinedload(ModelRow.aliases))
        )
        return session.scalars(query).unique().first()

    def _removable(self, session: Session, name: str, canonical: str) -> ModelRow:
        """The model ``rm NAME`` removes: by its name, or a bare name's only version;
        a bare name of several versions is refused, naming them."""
        row = session.scalar(select(ModelRow).where(ModelRow.name == canonical))
        if row is not None:
            return row
        base, _, tag = canonical.rpartition(":")
        versions: builtins.list[ModelRow] = []
        if tag == DEFAULT_TAG:
            query = self._versions_query(base).options(selectinload(ModelRow.aliases))
            versions = list(session.scalars(query))
        if len(versions) == 1:
            return versions[0]
        if versions:
            names = ", ".join(sorted(v.name for v in versions))
            raise InvalidRequest(f"{base!r} has versions {names}: remove one by its full name.")
        raise ModelNotFound(name)

    def _check_not_alias(self, session: Session, canonical: str) -> None:
        if session.get(AliasRow, canonical) is not None:
            raise InvalidRequest(f"{canonical!r} is an alias of another model; remove it first.")

    def _record(self, row: ModelRow) -> ModelRecord:
        files = tuple(ModelFile(f.path, f.sha256, f.size) for f in row.files)
        by_path = {f.path: f for f in files}
        primary = by_path.get(row.primary_file)
        if len(files) == 1 and primary is not None:
            path = self.blob_path(primary.sha256)  # one file: the engine opens the blob
        else:
            path = self._tree(row.name) / row.primary_file
        return ModelRecord(
            name=row.name,
            path=path,
            size=sum(f.size for f in files),
            sha256=primary.sha256 if primary else _tree_digest(files),
            created=row.created_at,
            info=ModelInfo.from_dict(row.info),
            format=row.format,
            engine=row.engine,
            files=files,
            source=row.source,
            revision=row.revision,
            aliases=tuple(a.alias for a in row.aliases),
            params=dict(row.params),
            last_used=row.last_used_at,
        )

    def _tree(self, canonical: str) -> Path:
        base, _, tag = canonical.partition(":")
        return self.models_dir / base / tag

    def _materialize(self, canonical: str, files: builtins.list[ModelFile]) -> None:
        """Lay a multi-file model out as the directory its engine expects (links to
        blobs): transformers and split GGUFs find their siblings by name."""
        self._unmaterialize(canonical)
        if len(files) <= 1:
            return
        tree = self._tree(canonical)
        for f in files:
            link = tree / f.path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.blob_path(f.sha256))

    def _unmaterialize(self, canonical: str) -> None:
        tree = self._tree(canonical)
        if tree.is_dir():
            shutil.rmtree(tree)

    def _invalidate(self) -> None:
        self._cache.clear()

    def _import_legacy_manifests(self) -> None:
        """Adopt models installed by Corral 0.1 (one JSON manifest per name), once."""
        if not self.models_dir.is_dir():
            return
        for manifest in sorted(self.models_dir.rglob("*.json")):
            if manifest.is_symlink():
                continue  # a file of a materialized model tree, not a manifest
            try:
                data = json.loads(manifest.read_text())
                if not isinstance(data, dict) or "blob" not in data:
                    continue
                name = str(data["name"])
                entry = ModelFile("model.gguf", str(data["sha256"]), int(data["size"]))
                self.register(name, [entry], source=str(data.get("source", "")), revision=None)
            except (OSError, ValueError, KeyError, CorralError, IntegrityError) as exc:
                log.warning("could not adopt old manifest %s: %s", manifest, exc)
                continue
            manifest.rename(manifest.with_suffix(".json.migrated"))
            log.info("adopted %s into the registry database", name)


def _same_model(
    row: ModelRow, files: builtins.list[ModelFile], params: Mapping[str, Any], engine: str | None
) -> bool:
    theirs = {(f.path, f.sha256) for f in row.files}
    return (
        theirs == {(f.path, f.sha256) for f in files}
        and dict(row.params) == dict(params)
        and row.engine == engine
    )


def _defaults(
    records: builtins.list[ModelRecord], names: Mapping[int, str], marked: Mapping[str, int]
) -> set[str]:
    """The names bare names mean: ``base:latest`` if a model has it, else the version
    marked default, else the newest (``Registry.get``'s rule, for a whole listing)."""
    by_base: dict[str, builtins.list[ModelRecord]] = {}
    for record in records:
        by_base.setdefault(record.base, []).append(record)
    chosen = set()
    for base, versions in by_base.items():
        tags = {r.tag: r for r in versions}
        if DEFAULT_TAG in tags:
            chosen.add(tags[DEFAULT_TAG].name)
        elif base in marked and marked[base] in names:
            chosen.add(names[marked[base]])
        else:
            chosen.add(max(versions, key=lambda r: (r.created, r.name)).name)
    return chosen


def _split_engine(
    params: Mapping[str, Any] | None, engine: str | None
) -> tuple[dict[str, Any], str | None]:
    """Declared parameters travel as one mapping; the engine has its own column."""
    rest = dict(params or {})
    declared = rest.pop("engine", None)
    return rest, engine or (str(declared) if declared else None)


def _tree_digest(files: tuple[ModelFile, ...]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()


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
