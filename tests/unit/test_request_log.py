"""The request log's store: filters, following, and pruning by age and count."""

from __future__ import annotations

import time
from pathlib import Path

from corral.registry.db import open_database
from corral.service import request_log as module
from corral.service.request_log import LogQuery, RequestLog, RequestLogRow


def row(
    at: float, status: int = 200, model: str | None = "m:latest", **extra: object
) -> RequestLogRow:
    return RequestLogRow(
        at=at,
        method="POST",
        route="/v1/chat/completions",
        model=model,
        status=status,
        duration_ms=1.0,
        **extra,
    )


def test_filters_and_following(tmp_path: Path) -> None:
    log = RequestLog(open_database(f"sqlite:///{tmp_path / 'r.db'}"), 30, 1000)
    now = time.time()
    for i in range(5):
        log.add(row(now - 100 + i, status=200 if i % 2 else 503, key_id=f"key_{i % 2}"))
    log.flush()
    assert [r.status for r in log.query(LogQuery(status_class=5))] == [503, 503, 503]
    assert len(log.query(LogQuery(key_id="key_1"))) == 2
    assert len(log.query(LogQuery(since=now - 97.5))) == 2
    newest = log.query(LogQuery(limit=2))
    assert [r.id for r in newest] == [4, 5]  # the newest, oldest first
    log.add(row(now))
    log.flush()
    assert [r.id for r in log.query(LogQuery(after_id=5))] == [6]


def test_old_rows_and_rows_over_the_count_are_pruned(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    log = RequestLog(open_database(f"sqlite:///{tmp_path / 'r.db'}"), 1, 3)
    now = time.time()
    log.add(row(now - 2 * 86400))  # older than a day
    for i in range(5):
        log.add(row(now - 10 + i))
    monkeypatch.setattr(module, "PRUNE_EVERY_SECONDS", 0.0)
    log.flush()
    kept = log.query(LogQuery(limit=100))
    assert [r.id for r in kept] == [4, 5, 6]  # the newest three


def test_a_long_prompt_is_kept_only_up_to_the_limit(tmp_path: Path) -> None:
    log = RequestLog(open_database(f"sqlite:///{tmp_path / 'r.db'}"), 30, 1000)
    log.add(row(time.time(), prompt="x" * (module.MAX_PROMPT_BYTES + 10)))
    log.flush()
    [stored] = log.query(LogQuery())
    assert stored.prompt is not None and len(stored.prompt) == module.MAX_PROMPT_BYTES
