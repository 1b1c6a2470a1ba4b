"""jobs.gpus (a copy of spec.gpus) and indexes for the job list and the queue order at scale

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A scheduling pass reads the GPUs of every queued job each second; a column of their
    # own spares it parsing thousands of JSON specs. Specs never change after submission.
    op.add_column("jobs", sa.Column("gpus", sa.Integer(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        gpus = "CAST(spec ->> 'gpus' AS INTEGER)"
    else:
        gpus = "CAST(json_extract(spec, '$.gpus') AS INTEGER)"
    op.execute(f"UPDATE jobs SET gpus = COALESCE({gpus}, 0)")
    # GET /jobs?status=X, newest first: with (status, id) a page is read off the index in
    # order, where ix_jobs_status left a sort of every job in that status (or a backward walk
    # of all jobs skipping the others). It serves whatever ix_jobs_status served, which goes.
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"], unique=False)
    op.drop_index("ix_jobs_status", table_name="jobs")
    # The queue order (priority DESC, id) among queued jobs: the queue positions (and the
    # scheduler's pass, where the planner likes it) walk the queue off the index, no sort.
    op.create_index(
        "ix_jobs_queue_order", "jobs", ["status", sa.text("priority DESC"), "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queue_order", table_name="jobs")
    op.create_index("ix_jobs_status", "jobs", ["status"], unique=False)
    op.drop_index("ix_jobs_status_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("gpus")
