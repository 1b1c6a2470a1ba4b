"""placed becomes a status of its own; jobs.worker (always equal to host) goes; jobs.resolved

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A queued job with a host was placed (the hidden sub-state the new status names).
    op.execute("UPDATE jobs SET status = 'placed' WHERE status = 'queued' AND host IS NOT NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker")
        batch.add_column(sa.Column("resolved", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resolved")
        batch.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
    op.execute("UPDATE jobs SET worker = host WHERE status <> 'queued'")
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'placed'")
