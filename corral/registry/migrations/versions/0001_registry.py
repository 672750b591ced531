"""The first registry schema: models, their files, aliases and pull jobs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("engine", sa.String(32)),
        sa.Column("architecture", sa.String(128), nullable=False),
        sa.Column("parameters", sa.BigInteger, nullable=False),
        sa.Column("quantization", sa.String(64), nullable=False),
        sa.Column("context_length", sa.Integer, nullable=False),
        sa.Column("has_chat_template", sa.Boolean, nullable=False),
        sa.Column("embedding", sa.Boolean, nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("revision", sa.String(128)),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("primary_file", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float),
    )
    op.create_table(
        "model_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "model_id",
            sa.Integer,
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("model_id", "path"),
    )
    op.create_table(
        "aliases",
        sa.Column("alias", sa.String(256), primary_key=True),
        sa.Column(
            "model_id",
            sa.Integer,
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
    )
    op.create_table(
        "pulls",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("ref", sa.Text, nullable=False),
        sa.Column("name", sa.String(256), nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False),
        sa.Column("bytes_total", sa.BigInteger),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("pulls")
    op.drop_table("aliases")
    op.drop_table("model_files")
    op.drop_table("models")
