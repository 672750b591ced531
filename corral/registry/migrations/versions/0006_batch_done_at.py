"""When each batch line was finished: the dashboard's per-batch chart of requests over time.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_done") as batch:
        batch.add_column(sa.Column("done_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_done") as batch:
        batch.drop_column("done_at")
