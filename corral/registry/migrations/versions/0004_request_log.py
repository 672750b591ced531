"""The request log.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("key_id", sa.String(64), index=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("route", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), index=True),
        sa.Column("status", sa.Integer, nullable=False, index=True),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("client", sa.String(64)),
        sa.Column("user", sa.String(256)),
        sa.Column("metadata", sa.JSON),
        sa.Column("prompt", sa.Text),
        sa.Column("output", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("request_log")
