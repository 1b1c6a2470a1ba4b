"""ix_jobs_queued_on_cpu: the queued jobs that train on the CPU, in queue order

A scheduling pass reads the front of the queue and, once no job further back can start on a
GPU, looks for the first CPU jobs further back to fill free CPU slots. Without this partial
index that look walked every queued GPU job each second. It holds queued CPU jobs only.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED_ON_CPU = sa.text("status = 'queued' AND gpus = 0")


def upgrade() -> None:
    op.create_index(
        "ix_jobs_queued_on_cpu",
        "jobs",
        [sa.text("priority DESC"), "id"],
        unique=False,
        sqlite_where=QUEUED_ON_CPU,
        postgresql_where=QUEUED_ON_CPU,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_on_cpu", table_name="jobs")
