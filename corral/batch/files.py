"""Stored files for the Batch API: uploads (checked line by line) and batch results.

Files live under ``CORRAL_HOME/files/<id>``; their rows say what they are. An upload
with ``purpose=batch`` is checked while it streams in: the first bad line stops it
and is named in the error, so a 50,000-line file with a typo on line 3 fails at once.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from corral.batch.lines import LineChecker
from corral.batch.pages import newest_first, visible_to
from corral.batch.tables import StoredFileRow
from corral.batch.upload import receive_upload
from corral.errors import FileNotFound, InvalidRequest
from corral.keys.store import Principal, sees

PURPOSES = ("batch",)


def file_object(row: StoredFileRow) -> dict[str, Any]:
    """OpenAI's File object."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at),
        "expires_at": int(row.expires_at) if row.expires_at else None,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


class FileStore:
    def __init__(
        self,
        engine: Engine,
        directory: Path,
        max_upload_bytes: int,
        max_line_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.max_upload_bytes = max_upload_bytes
        self.max_line_bytes = max_line_bytes  # one line is one request: max_body
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        self.get(file_id)
        return self.directory / file_id

    async def upload(
        self, content_type: str, body: AsyncIterator[bytes], owner: str | None = None
    ) -> StoredFileRow:
        file_id = "file-" + uuid.uuid4().hex[:24]
        dest = self.directory / f".upload-{file_id}"
        checker = LineChecker()
        checked_live = False

        def on_line(raw: bytes, fields: Mapping[str, str]) -> None:
            # Clients send ``purpose`` before the file: then a bad line stops the upload.
            nonlocal checked_live
            if fields.get("purpose") == "batch":
                checked_live = True
                checker.feed(raw)

        try:
            upload = await receive_upload(
                content_type,
                body,
                dest,
                limit=self.max_upload_bytes,
                on_line=on_line,
                max_line=self.max_line_bytes,
            )
            purpose = upload.fields.get("purpose")
            if purpose not in PURPOSES:
                raise InvalidRequest(
                    f"purpose must be 'batch' (Corral stores files for the Batch API), "
                    f"not {purpose!r}.",
                    param="purpose",
                )
            if not checked_live:  # off the event loop: a big file takes a while
                await asyncio.to_thread(_check_file, dest, checker)
            if checker.count == 0:
                raise InvalidRequest("The file is empty: a batch needs at least one request.")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        filename = upload.filename or "upload.jsonl"
        return self._adopt(dest, file_id, filename, "batch", checker.count, owner)

    def add(
        self, source: Path, filename: str, purpose: str, lines: int, owner: str | None = None
    ) -> StoredFileRow:
        """Register a file Corral wrote (a batch's output or errors), moving it in."""
        file_id = "file-" + uuid.uuid4().hex[:24]
        return self._adopt(source, file_id, filename, purpose, lines, owner)

    def _adopt(
        self,
        source: Path,
        file_id: str,
        filename: str,
        purpose: str,
        lines: int,
        owner: str | None,
    ) -> StoredFileRow:
        final = self.directory / file_id
        os.replace(source, final)
        row = StoredFileRow(
            id=file_id,
            filename=filename,
            purpose=purpose,
            bytes=final.stat().st_size,
            lines=lines,
            created_at=time.time(),
            expires_at=None,
            owner=owner,
        )
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(row)
        return row

    def get(self, file_id: str) -> StoredFileRow:
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(StoredFileRow, file_id)
        if row is None:
            raise FileNotFound(file_id)
        return row

    def get_visible(self, file_id: str, viewer: Principal | None) -> StoredFileRow:
        """The file, if ``viewer``'s key may see it; another key's file is a 404."""
        row = self.get(file_id)
        if not sees(viewer, row.owner):
            raise FileNotFound(file_id)
        return row

    def list(
        self,
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        viewer: Principal | None = None,
    ) -> tuple[builtins.list[StoredFileRow], bool]:
        """Newest first: (page, has_more). An unknown ``after`` gives an empty page."""
        anchor = None
        if after:
            with Session(self.engine, expire_on_commit=False) as session:
                anchor = session.get(StoredFileRow, after)
            if anchor is None or not sees(viewer, anchor.owner):
                return [], False
        where = [
            StoredFileRow.purpose == purpose if purpose else None,
            visible_to(StoredFileRow, viewer),
        ]
        return newest_first(self.engine, StoredFileRow, after=anchor, limit=limit, where=where)

    def delete(self, file_id: str) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(StoredFileRow, file_id)
            if row is None:
                raise FileNotFound(file_id)
            session.delete(row)
        (self.directory / file_id).unlink(missing_ok=True)


def _check_file(path: Path, checker: LineChecker) -> None:
    """Check a stored file line by line (when ``purpose`` came after the file part)."""
    with path.open("rb") as f:
        for raw in f:
            checker.feed(raw.rstrip(b"\r\n"))


__all__ = ["FileStore", "file_object"]
