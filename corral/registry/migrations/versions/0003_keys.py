"""API keys, their daily token use, and the owner of each stored file and batch.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("daily_tokens", sa.BigInteger),
        sa.Column("max_concurrent", sa.Integer),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
        sa.Column("note", sa.Text),
    )
    op.create_table(
        "key_usage",
        sa.Column(
            "key_id",
            sa.String(64),
            sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False),
    )
    # Files and batches belong to the key that made them (None: made with no key).
    with op.batch_alter_table("files") as table:
        table.add_column(sa.Column("owner", sa.String(64), index=True))
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("owner", sa.String(64), index=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as table:
        table.drop_column("owner")
    with op.batch_alter_table("files") as table:
        table.drop_column("owner")
    op.drop_table("key_usage")
    op.drop_table("api_keys")
