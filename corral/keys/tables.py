"""The rows of API keys and of their daily token use.

A key is stored as the SHA-256 of its secret, never the secret: keys are 256 random
bits, so a fast hash loses nothing to guessing (a password hash would only slow
every request). ``prefix`` (the secret's first characters) lets a user tell keys
apart in ``corral keys list`` without the database holding anything usable.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.registry.db import Base


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "key_..."
    name: Mapped[str] = mapped_column(String(128), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(16))  # "inference" or "admin"
    models: Mapped[list[str]] = mapped_column(JSON)  # canonical names; [] = every model
    rpm: Mapped[int | None] = mapped_column(Integer)  # requests per minute
    tpm: Mapped[int | None] = mapped_column(Integer)  # tokens per minute
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(Text)


class KeyUsageRow(Base):
    """Tokens a key used on one UTC day: what its daily quota is checked against."""

    __tablename__ = "key_usage"

    key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "2026-12-01"
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class KeyRateRow(Base):
    """What one gateway has let each key spend since it started (requests and tokens,
    running totals): every gateway reads the others' every second and drains its own
    per-minute buckets by their growth, so a key's limit holds across gateways."""

    __tablename__ = "key_rates"

    key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    gateway: Mapped[str] = mapped_column(String(160), primary_key=True)  # name + start
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    updated: Mapped[float] = mapped_column(Float)
