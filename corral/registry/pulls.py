"""Pull jobs: background downloads that survive restarts, deduplicated and cancellable.

A job is a row in the registry database (``PullRow``) plus, while it runs, a thread
in the process that owns it. The row says what to fetch and how far it got; the
resume files in ``downloads/`` hold the bytes. So a restart (or a new ``corral pull``
after the CLI was killed) finds unfinished rows whose owner is gone and carries on
from the bytes on disk. Threads, not the event loop: hashing and disk writes would
stall serving, and ``huggingface_hub`` is synchronous.

Life cycle: ``queued`` -> ``running`` -> ``completed`` | ``failed`` | ``cancelled``.
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.errors import CorralError, InsufficientStorage, LockDrift, PullNotFound
from corral.registry import download
from corral.registry.access import PullGuard, allowed_path
from corral.registry.db import PullRow
from corral.registry.names import canonical_name
from corral.registry.network import network_failure
from corral.registry.records import ModelFile, ModelRecord
from corral.registry.refs import parse_reference
from corral.registry.resolve import Plan, RemoteFile, hub_headers, resolve
from corral.registry.store import Registry
from corral.units import format_size

log = logging.getLogger("corral.pulls")
ACTIVE = ("queued", "running")
_SAVE_EVERY = 0.5  # seconds between progress writes to the database
# A job owned by a process on another host (another gateway on the same database) is
# that process's while it touches the job's row; it touches its jobs every HEARTBEAT.
HEARTBEAT = 5.0
STALE_AFTER = 30.0


@dataclass(frozen=True)
class PullStatus:
    id: str
    ref: str
    name: str
    state: str
    bytes_done: int
    bytes_total: int | None
    rate: float  # bytes per second, recent
    error: str | None
    created_at: float
    finished_at: float | None
    # The file being fetched now, while the job runs here (Ollama reports per file).
    file: str | None = None
    file_sha256: str | None = None
    file_size: int | None = None
    file_done: int = 0

    @property
    def eta(self) -> float | None:
        if self.bytes_total is None or self.rate <= 0 or self.state != "running":
            return None
        return max(self.bytes_total - self.bytes_done, 0) / self.rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "model": self.name,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "rate": round(self.rate, 1),
            "eta": None if self.eta is None else round(self.eta, 1),
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "file": None
            if self.file is None
            else {
                "path": self.file,
                "sha256": self.file_sha256,
                "size": self.file_size,
                "bytes_done": self.file_done,
            },
        }


class _Run:
    """What a running job keeps in memory: progress counters and its cancel switch."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.done = 0
        self.total: int | None = None
        self.rate = 0.0
        self._window: list[tuple[float, int]] = []
        self.thread: threading.Thread | None = None
        self.file: RemoteFile | None = None  # the file being fetched
        self.file_done = 0

    def add(self, n: int) -> None:
        self.done += n
        self.file_done += n
        now = time.monotonic()
        self._window.append((now, self.done))
        while len(self._window) > 2 and now - self._window[0][0] > 5.0:
            self._window.pop(0)
        t0, d0 = self._window[0]
        if now - t0 > 0.2:
            self.rate = max(self.done - d0, 0) / (now - t0)


class Pulls:
    def __init__(
        self,
        registry: Registry,
        *,
        downloads_dir: Path,
        disk_reserve: int,
        max_parallel: int = 2,
        allow_private: bool = False,
    ) -> None:
        self.registry = registry
        self.guard = PullGuard(allow_private=allow_private)
        self.downloads_dir = downloads_dir
        self.disk_reserve = disk_reserve
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._slots = threading.Semaphore(max_parallel)
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._heartbeat: threading.Thread | None = None

    # --- what callers use ----------------------------------------------------------------

    def submit(
        self,
        ref: str,
        *,
        name: str | None = None,
        revision: str | None = None,
        sha256: str | None = None,
        params: Mapping[str, Any] | None = None,
        aliases: list[str] | None = None,
        expect: Mapping[str, str] | None = None,
        import_dirs: Sequence[str] | None = None,
    ) -> tuple[PullStatus, bool]:
        """Start pulling ``ref``; returns (job, created). A pull of a model already
        being pulled returns that job instead of starting a second one.

        ``import_dirs``: the directories a local path may be in (the API's callers);
        None: anywhere (the CLI's own pulls). A URL on a private address is refused
        here already unless this ``Pulls`` allows private pulls (and again at each
        request the job makes, redirects included)."""
        reference = parse_reference(ref, probe=import_dirs is None)
        if reference.kind == "path" and import_dirs is not None:
            assert reference.path is not None
            allowed_path(reference.path, import_dirs, given=reference.text)
        if reference.kind == "url":
            self.guard.check_url(str(reference.url))
        target = canonical_name(name) if name else reference.default_name
        with self._lock:
            with Session(self.registry.engine, expire_on_commit=False) as session, session.begin():
                existing = session.scalar(
                    select(PullRow).where(PullRow.name == target, PullRow.state.in_(ACTIVE))
                )
                orphan = existing is not None and not (
                    existing.id in self._runs or _alive(existing)
                )
                if existing is not None and orphan:
                    self._adopt(existing)  # its owner died: carry on here
                if existing is not None:
                    status = self._status(existing)
            if existing is not None:
                if orphan:
                    self._launch(existing.id)
                return status, False
            with Session(self.registry.engine, expire_on_commit=False) as session, session.begin():
                now = time.time()
                row = PullRow(
                    id=uuid.uuid4().hex[:16],
                    ref=ref,
                    name=target,
                    state="queued",
                    options={
                        "revision": revision,
                        "sha256": sha256,
                        "params": dict(params or {}),
                        "aliases": list(aliases or []),
                        "expect": dict(expect or {}),
                        "import_dirs": None if import_dirs is None else list(import_dirs),
                        "owner": self.owner,
                    },
                    bytes_done=0,
                    bytes_total=None,
                    error=None,
                    created_at=now,
                    updated_at=now,
                    finished_at=None,
                )
                session.add(row)
            self._launch(row.id)
            return self._status(row), True

    def get(self, job_id: str) -> PullStatus:
        with Session(self.registry.engine, expire_on_commit=False) as session:
            row = session.get(PullRow, job_id)
            if row is None:
                raise PullNotFound(job_id)
            return self._status(row)

    def list(self, limit: int = 100) -> builtins.list[PullStatus]:
        with Session(self.registry.engine, expire_on_commit=False) as session:
            rows = session.scalars(
                select(PullRow).order_by(PullRow.created_at.desc()).limit(limit)
            ).all()
            return [self._status(row) for row in rows]

    def cancel(self, job_id: str) -> PullStatus:
        """Stop a pull; bytes already fetched stay for a later pull to resume."""
        status = self.get(job_id)
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel.set()
        elif status.state in ACTIVE:  # owned by a dead process, or not started here
            self._finish(job_id, "cancelled", None)
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> PullStatus:
        run = self._runs.get(job_id)
        if run is not None and run.thread is not None:
            run.thread.join(timeout)
        return self.get(job_id)

    def resume_unfinished(self) -> builtins.list[str]:
        """Carry on every unfinished job whose owner is gone (a server restart)."""
        resumed = []
        with (
            self._lock,
            Session(self.registry.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            # Locked, skipping rows another gateway is adopting right now (Postgres): a
            # job is resumed by one gateway only.
            rows = session.scalars(
                select(PullRow).where(PullRow.state.in_(ACTIVE)).with_for_update(skip_locked=True)
            )
            for row in rows:
                if row.id in self._runs or _alive(row):
                    continue
                self._adopt(row)
                resumed.append(row.id)
        for job_id in resumed:
            log.info("resuming pull %s", job_id)
            self._launch(job_id)
        return resumed

    def _touch_jobs(self) -> None:
        """Say the jobs here are alive, for gateways on other hosts (see ``_alive``)."""
        while not self._stopping:
            time.sleep(HEARTBEAT)
            ids = list(self._runs)
            if not ids:
                continue
            try:
                with Session(self.registry.engine) as session, session.begin():
                    session.execute(
                        update(PullRow)
                        .where(PullRow.id.in_(ids), PullRow.state.in_(ACTIVE))
                        .values(updated_at=time.time())
                    )
            except Exception:
                log.exception("cannot mark the pulls running here as alive")

    def close(self, timeout: float = 10.0) -> None:
        """Stop running jobs without marking them cancelled: the next start resumes them."""
        self._stopping = True
        for run in list(self._runs.values()):
            run.cancel.set()
        for run in list(self._runs.values()):
            if run.thread is not None:
                run.thread.join(timeout)

    # --- the job itself ------------------------------------------------------------------

    def _adopt(self, row: PullRow) -> None:
        row.options = {**row.options, "owner": self.owner}
        row.state = "queued"
        row.updated_at = time.time()

    def _launch(self, job_id: str) -> None:
        run = _Run()
        self._runs[job_id] = run
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(
                target=self._touch_jobs, name="pull-heartbeat", daemon=True
            )
            self._heartbeat.start()
        run.thread = threading.Thread(
            target=self._run, args=(job_id, run), name=f"pull-{job_id}", daemon=True
        )
        run.thread.start()

    def _run(self, job_id: str, run: _Run) -> None:
        try:
            while not self._slots.acquire(timeout=0.2):  # queued behind other pulls
                if run.cancel.is_set():
                    raise download.Cancelled()
            try:
                record = self._pull(job_id, run)
            finally:
                self._slots.release()
            self._finish(job_id, "completed", None, run, model=record.name)
            log.info("pulled %s (%s)", record.name, format_size(record.size))
        except download.Cancelled:
            if self._stopping:
                self._save(job_id, run, state="queued")  # resumed at next start
            else:
                self._finish(job_id, "cancelled", None, run)
        except CorralError as exc:
            self._finish(job_id, "failed", exc.message, run)
        except Exception as exc:  # a job must end in a state, whatever went wrong
            reason = network_failure(exc)
            if reason is None:  # not the network: a bug, worth its traceback
                log.exception("pull %s failed", job_id)
                reason = f"{type(exc).__name__}: {exc}"
            else:
                log.warning("pull %s failed: %s", job_id, reason)
            self._finish(job_id, "failed", reason, run)
        finally:
            self._runs.pop(job_id, None)

    def _pull(self, job_id: str, run: _Run) -> ModelRecord:
        with Session(self.registry.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(PullRow, job_id)
            assert row is not None
            row.state, row.updated_at = "running", time.time()
            ref, name, options = row.ref, row.name, dict(row.options)
        import_dirs = options.get("import_dirs")
        plan = resolve(
            parse_reference(ref, probe=import_dirs is None),
            revision=options.get("revision"),
            sha256=options.get("sha256"),
            guard=self.guard,
            import_dirs=import_dirs,
        )
        if options.get("expect"):
            plan = _pin(plan, options["expect"], name)
        run.total = plan.total
        self._check_disk(plan, name)
        self._save(job_id, run)
        headers = hub_headers() if plan.auth else {}
        files = []
        last_save = [time.monotonic()]

        def progress(n: int) -> None:
            run.add(n)
            if time.monotonic() - last_save[0] > _SAVE_EVERY:
                last_save[0] = time.monotonic()
                self._save(job_id, run)

        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        timeout = httpx.Timeout(30.0, read=120.0)
        with self.guard.client(follow_redirects=True, timeout=timeout) as client:
            for remote in plan.files:
                files.append(self._fetch_one(remote, headers, progress, run, client))
        self._save(job_id, run)
        record = self.registry.register(
            name,
            files,
            source=plan.resolved,
            revision=plan.revision,
            params=options.get("params") or {},
        )
        if options.get("aliases"):
            record = self.registry.set_aliases(record.name, options["aliases"])
        return record

    def _fetch_one(
        self,
        remote: RemoteFile,
        headers: dict[str, str],
        progress: download.Progress,
        run: _Run,
        client: httpx.Client,
    ) -> ModelFile:
        run.file, run.file_done = remote, 0
        if remote.sha256 and self.registry.has_blob(remote.sha256, remote.size):
            progress(remote.size or 0)  # already in the store (another model has it)
            return ModelFile(remote.path, remote.sha256, remote.size or 0)
        partial = self.downloads_dir / f"{remote.key}.partial"
        digest = download.fetch(
            remote, partial, headers=headers, progress=progress, cancel=run.cancel, client=client
        )
        size = partial.stat().st_size
        self.registry.adopt_blob(partial, digest)
        return ModelFile(remote.path, digest, size)

    def _check_disk(self, plan: Plan, name: str) -> None:
        """Refuse before downloading a byte if the files cannot fit (with the reserve)."""
        need = 0
        for remote in plan.files:
            if remote.size is None:
                continue
            if remote.sha256 and self.registry.has_blob(remote.sha256, remote.size):
                continue
            partial = self.downloads_dir / f"{remote.key}.partial"
            have = partial.stat().st_size if partial.exists() else 0
            need += max(remote.size - have, 0)
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.downloads_dir).free
        if need + self.disk_reserve > free:
            raise InsufficientStorage(
                f"Not enough disk space to pull {name}: it needs {format_size(need)} more, "
                f"{format_size(free)} is free and {format_size(self.disk_reserve)} is kept in "
                "reserve (CORRAL_DISK_RESERVE)."
            )

    # --- persistence ---------------------------------------------------------------------

    def _save(self, job_id: str, run: _Run, state: str | None = None) -> None:
        with Session(self.registry.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(PullRow, job_id)
            if row is None:
                return
            row.bytes_done = max(run.done, 0)
            row.bytes_total = run.total
            row.updated_at = time.time()
            if state is not None:
                row.state = state

    def _finish(
        self,
        job_id: str,
        state: str,
        error: str | None,
        run: _Run | None = None,
        model: str | None = None,
    ) -> None:
        """End a job; ``model``: the name it created (a tensor model's new version,
        ``iris:3``, where the job asked for ``iris``)."""
        with Session(self.registry.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(PullRow, job_id)
            if row is None:
                return
            row.state, row.error = state, error
            if model is not None:
                row.name = model
            if run is not None:
                row.bytes_done, row.bytes_total = max(run.done, 0), run.total
            row.updated_at = row.finished_at = time.time()
        if error:
            log.warning("pull %s %s: %s", job_id, state, error)

    def _status(self, row: PullRow) -> PullStatus:
        run = self._runs.get(row.id)
        live = run is not None and row.state in ACTIVE
        file = run.file if live and run else None
        return PullStatus(
            id=row.id,
            ref=row.ref,
            name=row.name,
            state=row.state,
            bytes_done=max(run.done, 0) if live and run else row.bytes_done,
            bytes_total=(run.total if live and run else None) or row.bytes_total,
            rate=run.rate if live and run else 0.0,
            error=row.error,
            created_at=row.created_at,
            finished_at=row.finished_at,
            file=file.path if file else None,
            file_sha256=file.sha256 if file else None,
            file_size=file.size if file else None,
            file_done=max(run.file_done, 0) if file and run else 0,
        )


def _pin(plan: Plan, expect: Mapping[str, str], name: str) -> Plan:
    """Hold a plan to a lock file's hashes: the same files, and each file's bytes
    verified against the locked sha256 before anything is registered."""
    paths = {f.path for f in plan.files}
    if paths != set(expect):
        missing, extra = sorted(set(expect) - paths), sorted(paths - set(expect))
        raise LockDrift(
            f"{name}: the source's files differ from the lock (missing: {missing or '-'}, "
            f"new: {extra or '-'})."
        )
    pinned = []
    for f in plan.files:
        if f.sha256 is not None and f.sha256 != expect[f.path]:
            raise LockDrift(
                f"{name}: {f.path} is now sha256 {f.sha256[:12]}..., the lock says "
                f"{expect[f.path][:12]}..."
            )
        pinned.append(replace(f, sha256=expect[f.path]))
    return replace(plan, files=tuple(pinned))


def _alive(row: PullRow) -> bool:
    """Whether the process that owns a job still runs: on this host, by its pid; on
    another (a gateway sharing the database), by the row's recent heartbeat."""
    owner = row.options.get("owner")
    if not isinstance(owner, str) or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return time.time() - row.updated_at < STALE_AFTER
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # our own row with no thread here: left over from this process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
