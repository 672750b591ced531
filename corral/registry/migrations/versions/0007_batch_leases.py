"""Batch leases: which gateway runs a batch, until when, in which generation; and the
generation whose journal holds each finished line (several gateways on one database).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Float, nullable=True))
        batch.add_column(sa.Column("lease_generation", sa.Integer, nullable=True))
    with op.batch_alter_table("batch_done") as batch:
        batch.add_column(sa.Column("generation", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_done") as batch:
        batch.drop_column("generation")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("lease_generation")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
