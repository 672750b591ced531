"""``corral sync`` and ``corral lock``: make the registry match ``corral.yaml``.

``sync`` pulls each declared model that is missing or whose source or pinned revision
changed, and sets declared engine parameters and aliases on the rest. ``sync
--locked`` takes revisions and hashes from ``corral.lock`` instead: any difference
between the yaml and the lock, or between the lock and the bytes a source now
serves, is an error, and nothing unverified is registered. ``lock`` syncs, then
records what is installed: a URL's or a local file's hash is only known from its
bytes, so a lock names exactly what was installed, not a guess.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from corral.cli.models import follow_pull
from corral.cli.registry import RegistryClient, RegistryError
from corral.registry.declared import DeclaredModel, LockedFile, LockedModel, LockFile
from corral.registry.refs import parse_reference

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class SyncError(Exception):
    """The registry cannot be made to match (drift under --locked, a failed pull)."""


@dataclass(frozen=True)
class Action:
    model: DeclaredModel
    ref: str  # what to pull (a local path made absolute)
    pull: bool
    reason: str
    revision: str | None = None
    expect: dict[str, str] | None = None


def plan(
    declared: list[DeclaredModel],
    installed: dict[str, dict[str, Any]],
    base: Path,
    lock: LockFile | None = None,
) -> list[Action]:
    """What sync must do for each declared model (pure: no I/O)."""
    if lock is not None:
        _check_drift(declared, lock)
    actions = []
    for d in declared:
        ref = parse_reference(d.source, base=base)
        m = installed.get(d.name)
        if lock is not None:
            locked = lock.models[d.name]
            want = {f.path: f.sha256 for f in locked.files}
            have = {f["path"]: f["sha256"] for f in m["files"]} if m else None
            if have == want:
                actions.append(Action(d, ref.canonical, False, "matches the lock"))
            else:
                reason = "not installed" if m is None else "differs from the lock"
                actions.append(
                    Action(d, ref.canonical, True, reason, locked.revision or d.revision, want)
                )
            continue
        if m is None:
            actions.append(Action(d, ref.canonical, True, "not installed", d.revision))
        elif m["source"] != ref.canonical:
            actions.append(Action(d, ref.canonical, True, "source changed", d.revision))
        elif d.revision and _COMMIT.match(d.revision) and d.revision != m["revision"]:
            actions.append(Action(d, ref.canonical, True, "revision changed", d.revision))
        elif d.sha256 and d.sha256 not in {f["sha256"] for f in m["files"]}:
            actions.append(Action(d, ref.canonical, True, "checksum changed", d.revision))
        else:
            actions.append(Action(d, ref.canonical, False, "up to date"))
    return actions


def _check_drift(declared: list[DeclaredModel], lock: LockFile) -> None:
    problems = []
    names = {d.name for d in declared}
    for d in declared:
        locked = lock.models.get(d.name)
        if locked is None:
            problems.append(f"{d.name} is declared but not in the lock")
        elif locked.source != d.source:
            problems.append(f"{d.name}: source is {d.source!r}, the lock has {locked.source!r}")
        elif (
            d.revision
            and locked.revision
            and _COMMIT.match(d.revision)
            and (d.revision != locked.revision)
        ):
            problems.append(f"{d.name}: revision {d.revision} differs from the lock's")
    problems += [f"{n} is in the lock but not declared" for n in sorted(set(lock.models) - names)]
    if problems:
        raise SyncError(
            "corral.yaml and corral.lock disagree (run `corral lock` to update the lock):\n  "
            + "\n  ".join(problems)
        )


def sync(
    client: RegistryClient,
    declared: list[DeclaredModel],
    base: Path,
    console: Console,
    lock: LockFile | None = None,
) -> list[Action]:
    installed = by_name(client.list())
    actions = plan(declared, installed, base, lock)
    failures = []
    for action in actions:
        d = action.model
        if not action.pull:
            current = installed[d.name]
            if (current["params"], current["engine"], sorted(current["aliases"])) != (
                d.params,
                d.engine,
                sorted(d.aliases),
            ):
                client.configure(current["name"], _params(d), list(d.aliases))
            console.print(f"[green]ok[/green] {d.name} ({action.reason})")
            continue
        console.print(f"[cyan]pull[/cyan] {d.name} from {d.source} ({action.reason})")
        try:
            job = client.pull(
                action.ref,
                name=d.name,
                revision=action.revision,
                sha256=d.sha256,
                params=_params(d),
                aliases=list(d.aliases),
                expect=action.expect,
            )
        except RegistryError as exc:
            failures.append(f"{d.name}: {exc}")
            continue
        job = follow_pull(client, job, console)
        if job["state"] != "completed":
            failures.append(f"{d.name}: {job['error'] or job['state']}")
    if failures:
        raise SyncError("\n".join(failures))
    return actions


def by_name(models: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Installed models by the names a declaration may use: each one's own, and a bare
    name (``iris:latest``) for the version it means (``iris:3``)."""
    named = {m["name"]: m for m in models}
    for m in models:
        if m.get("default"):
            named.setdefault(m["name"].rpartition(":")[0] + ":latest", m)
    return named


def _params(d: DeclaredModel) -> dict[str, Any]:
    return {**d.params, **({"engine": d.engine} if d.engine else {})}


def lock_from_installed(
    client: RegistryClient, declared: list[DeclaredModel], base: Path | None = None
) -> LockFile:
    """The lock for what is installed; local paths relative to ``base`` (the lock file's
    directory), so that a project directory can be moved or shared."""
    models = {}
    for d in declared:
        m = client.show(d.name)
        models[d.name] = LockedModel(
            name=d.name,
            source=d.source,
            resolved=_relative(m["source"], base),
            revision=m["revision"],
            files=tuple(LockedFile(f["path"], f["size"], f["sha256"]) for f in m["files"]),
        )
    return LockFile(version=1, models=models)


def _relative(source: str, base: Path | None) -> str:
    """A local absolute path as ``./...`` relative to ``base``; anything else as it is."""
    if base is None or not os.path.isabs(source):
        return source
    relative = os.path.relpath(source, base)
    return relative if relative.startswith("..") else f"./{relative}"
