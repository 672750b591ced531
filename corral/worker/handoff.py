"""What a worker writes down as it hands a finished result back.

- **The batch spool.** A batch request carries ``X-Corral-Batch`` and its id in
  ``X-Corral-Request-Id``; the worker appends the response to
  ``<spool dir>/<batch>/spool-<pid>.jsonl`` before sending it. If the gateway is
  killed after the engine finished but before the result was committed to the
  batch's journal, the restarted runner finds the result here instead of running
  the request again. One ``write`` with ``O_APPEND`` and no fsync: the spool guards
  against a crashed process (the page cache survives it), the journal's fsync
  against a crashed machine.
- **The execution log** (``CORRAL_EXECUTION_LOG``, for tests and audits): one
  request id per request the engine ran to the end.

Both happen under ``lock``, which the parent-watch thread takes before it exits the
process, so an exit never falls between running a request and recording it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request

from corral.protocol.handoff import BATCH_HEADER, REQUEST_ID_HEADER

_BATCH_ID = re.compile(r"^batch_[A-Za-z0-9]{1,64}$")
_LOG_PATH = os.environ.get("CORRAL_EXECUTION_LOG")

lock = threading.Lock()
_spool_dir: Path | None = None


def configure(spool_dir: Path | None) -> None:
    global _spool_dir
    _spool_dir = spool_dir


def finished(request: Request, body_json: str | Callable[[], str]) -> None:
    """Record a request the engine has run to the end, with its response body (or
    what makes it, called only for a batch request, the one kind spooled)."""
    request_id = request.headers.get(REQUEST_ID_HEADER, "-").replace("\n", " ")
    batch = request.headers.get(BATCH_HEADER)
    spooled = bool(batch and _spool_dir is not None and _BATCH_ID.match(batch))
    if spooled and callable(body_json):
        body_json = body_json()
    with lock:
        if spooled:
            assert batch is not None and _spool_dir is not None
            directory = _spool_dir / batch
            directory.mkdir(parents=True, exist_ok=True)
            entry = f'{{"id":{json.dumps(request_id)},"body":{body_json}}}\n'
            _append(directory / f"spool-{os.getpid()}.jsonl", entry.encode())
        if _LOG_PATH:
            _append(Path(_LOG_PATH), (request_id + "\n").encode())


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)
