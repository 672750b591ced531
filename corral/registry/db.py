"""The registry's tables, and opening the database at the current schema.

SQLAlchemy 2 so the embedded SQLite file can be swapped for Postgres when several
gateways share one registry. The schema is owned by Alembic (``migrations/``):
``open_database`` upgrades an older file in place, so a new Corral never loses a
user's registry. Rows are plain facts; the rules live in ``store.py`` and ``pulls.py``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MIGRATIONS = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)  # canonical name:tag
    format: Mapped[str] = mapped_column(String(32))
    engine: Mapped[str | None] = mapped_column(String(32))
    architecture: Mapped[str] = mapped_column(String(128))
    parameters: Mapped[int] = mapped_column(BigInteger)
    quantization: Mapped[str] = mapped_column(String(64))
    context_length: Mapped[int] = mapped_column(Integer)
    has_chat_template: Mapped[bool] = mapped_column(Boolean)
    embedding: Mapped[bool] = mapped_column(Boolean)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # every header fact (ModelInfo)
    source: Mapped[str] = mapped_column(Text)  # what was asked for: ref, URL or path
    revision: Mapped[str | None] = mapped_column(String(128))  # exact commit, if any
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # engine parameters (corral.yaml)
    primary_file: Mapped[str] = mapped_column(Text)  # the file the engine opens
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)

    files: Mapped[list[FileRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="FileRow.path"
    )
    aliases: Mapped[list[AliasRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="AliasRow.alias"
    )


class FileRow(Base):
    """One file of a model: its path inside the model and the blob holding it."""

    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("model_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # names the blob
    size: Mapped[int] = mapped_column(BigInteger)

    model: Mapped[ModelRow] = relationship(back_populates="files")


class AliasRow(Base):
    """Another name for a model (from ``corral.yaml``); requests to it reach the model."""

    __tablename__ = "aliases"

    alias: Mapped[str] = mapped_column(String(256), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)

    model: Mapped[ModelRow] = relationship(back_populates="aliases")


class DefaultRow(Base):
    """The version a bare name means (``iris`` -> ``iris:2``) when the user chose one;
    without a row, the newest version is the default (``Registry.get``)."""

    __tablename__ = "model_defaults"

    base: Mapped[str] = mapped_column(String(256), primary_key=True)  # the name without tag
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)


class BenchmarkRow(Base):
    """One ``corral bench`` run: kept by name and file hash, not by a foreign key, so
    the history of a version outlives its removal and ``--compare`` can still show it."""

    __tablename__ = "benchmarks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(256), index=True)  # canonical name:tag
    sha256: Mapped[str] = mapped_column(String(64))  # which files were measured
    created_at: Mapped[float] = mapped_column(Float)
    machine: Mapped[dict[str, Any]] = mapped_column(JSON)  # CPU, cores, memory, versions
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # batch sizes, concurrency, ...
    results: Mapped[dict[str, Any]] = mapped_column(JSON)  # rows of latency and throughput


class PullRow(Base):
    """A pull job. It lives here, not in memory, so a restart resumes it."""

    __tablename__ = "pulls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    ref: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(256), index=True)  # the model it will create
    state: Mapped[str] = mapped_column(String(16), index=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)  # revision, sha256, params
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


_upgrade_lock = threading.Lock()
_MIGRATION_LOCK = 0x636F7272616C  # "corral": the advisory lock gateways migrate under


def open_database(url: str) -> Engine:
    """An engine on ``url`` with the schema upgraded to the newest migration."""
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False} if is_sqlite else {},
    )
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    with _upgrade_lock:
        upgrade(engine)
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic configures logging from an ini file when given one; without one it
    # stays quiet, which is what a server's startup wants.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several gateways may start at once: one migrates, the others wait for it
            # (a transaction-scoped lock, released at commit) and then find nothing to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: the CLI can read while the server writes; foreign keys: cascades work.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
