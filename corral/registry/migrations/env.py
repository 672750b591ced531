"""Alembic environment: always run online, on the connection ``db.upgrade`` passes in."""

from __future__ import annotations

from alembic import context

from corral.registry.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables
)
with context.begin_transaction():
    context.run_migrations()
