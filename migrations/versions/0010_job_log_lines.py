"""trainer logs in the database: job_log_lines, and per-job counters of lines kept and dropped

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_log_lines",
        # 64-bit: every line of every job ever run gets one (SQLite's INTEGER is 64-bit).
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name="fk_job_log_lines_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_job_log_lines"),
        sqlite_autoincrement=True,
    )
    # The tail of one job's log, newest first, is a short walk back along this index.
    op.create_index("ix_job_log_lines_job_id_id", "job_log_lines", ["job_id", "id"])
    # Plain ADD COLUMN (no batch rebuild): the jobs table keeps its AUTOINCREMENT on SQLite.
    op.add_column(
        "jobs", sa.Column("log_lines", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "jobs", sa.Column("log_dropped", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("log_dropped")
        batch.drop_column("log_lines")
    op.drop_index("ix_job_log_lines_job_id_id", table_name="job_log_lines")
    op.drop_table("job_log_lines")
