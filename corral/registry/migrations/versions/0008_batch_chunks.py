"""Batch chunks: runs of a batch's lines, each leased to one gateway at a time, so
several gateways on one database split a batch's work.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        # Every claim's generation comes from this counter (the batch's and its chunks').
        batch.add_column(sa.Column("generations", sa.Integer, nullable=True))
    op.create_table(
        "batch_chunks",
        sa.Column(
            "batch_id",
            sa.String(64),
            sa.ForeignKey("batches.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("chunk", sa.Integer, primary_key=True),
        sa.Column("first_line", sa.Integer, nullable=False),
        sa.Column("last_line", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("generation", sa.Integer, nullable=True),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("batch_chunks")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("generations")
