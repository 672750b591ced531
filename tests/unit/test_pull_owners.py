"""Which process carries on an unfinished pull: its owner while it lives (on this host,
by its pid; on another host, a gateway sharing the database, by its heartbeat)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from corral.registry.db import PullRow
from corral.registry.pulls import STALE_AFTER, Pulls
from corral.registry.store import Registry


def job(registry: Registry, owner: str, updated: float) -> str:
    job_id = f"job-{owner.replace(':', '-')}-{int(updated)}"
    row = PullRow(
        id=job_id,
        ref="/nonexistent/model.gguf",
        name="m:latest",
        state="running",
        options={"owner": owner, "params": {}, "aliases": [], "expect": {}},
        bytes_done=0,
        bytes_total=None,
        error=None,
        created_at=updated,
        updated_at=updated,
        finished_at=None,
    )
    with Session(registry.engine) as session, session.begin():
        session.add(row)
    return job_id


@pytest.fixture
def pulls(tmp_path: Path) -> Pulls:
    registry = Registry(tmp_path / "home")
    return Pulls(registry, downloads_dir=tmp_path / "home" / "downloads", disk_reserve=0)


def test_a_pull_another_host_still_touches_is_left_to_it(pulls: Pulls) -> None:
    job(pulls.registry, "gateway-b.internal:4242", time.time())
    assert pulls.resume_unfinished() == []


def test_a_pull_whose_other_host_went_quiet_is_taken_over(pulls: Pulls) -> None:
    quiet = job(pulls.registry, "gateway-b.internal:4242", time.time() - STALE_AFTER - 1)
    assert pulls.resume_unfinished() == [quiet]
    pulls.close()
    assert pulls.get(quiet).state in ("queued", "running", "failed")  # ours now


def test_a_pull_of_a_dead_local_process_is_resumed(pulls: Pulls) -> None:
    import socket

    dead = job(pulls.registry, f"{socket.gethostname()}:999999", time.time())
    assert pulls.resume_unfinished() == [dead]
    pulls.close()
