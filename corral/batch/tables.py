"""The Batch API's rows: stored files, batches, and the requests each batch has done.

The output and error files on disk are the record of what a batch has done (see
``journal.py``); ``batch_done`` indexes them so counting and resuming need no file
scan. Both are written in that order, so a crash can only leave the index behind
the files, never ahead, and recovery brings it level from the files.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.registry.db import Base


class StoredFileRow(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "file-..."
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)  # JSONL lines (batch input and output)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)  # key id, if any


class BatchRow(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "batch_..."
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    in_progress_at: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    finalizing_at: Mapped[float | None] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)
    failed_at: Mapped[float | None] = mapped_column(Float)
    expired_at: Mapped[float | None] = mapped_column(Float)
    cancelling_at: Mapped[float | None] = mapped_column(Float)
    cancelled_at: Mapped[float | None] = mapped_column(Float)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)  # key id, if any
    # The gateway running it, until when, in which generation (see ``leases.py``).
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[float | None] = mapped_column(Float)
    lease_generation: Mapped[int | None] = mapped_column(Integer)
    generations: Mapped[int | None] = mapped_column(Integer)  # the last one handed out


class BatchDoneRow(Base):
    """One input line a batch has finished (its result is in the output or error file)."""

    __tablename__ = "batch_done"

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based input line
    ok: Mapped[bool] = mapped_column(Boolean)  # True: output file; False: error file
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: recovered
    # Whose journal holds its result: the lease generation (None: the batch's first
    # journal, from before leases).
    generation: Mapped[int | None] = mapped_column(Integer, nullable=True)


class BatchChunkRow(Base):
    """A run of a batch's input lines that one gateway works on at a time (a lease of
    its own, see ``leases.py``): several gateways split a batch by its chunks."""

    __tablename__ = "batch_chunks"

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_line: Mapped[int] = mapped_column(Integer)  # 1-based, inclusive
    last_line: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)  # byte offset of first_line in the file
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[float | None] = mapped_column(Float)
    generation: Mapped[int | None] = mapped_column(Integer)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
