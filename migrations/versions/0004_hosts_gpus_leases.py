"""hosts, their GPUs, GPU leases; job placement

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=255), nullable=False),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("gpu_source", sa.String(length=32), nullable=False),
        sa.Column("cpu_slots", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_hosts")),
    )
    op.create_table(
        "gpus",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("uuid", sa.String(length=100), nullable=True),
        sa.Column("memory_total_mib", sa.Integer(), nullable=True),
        sa.Column("memory_used_mib", sa.Integer(), nullable=True),
        sa.Column("utilization_percent", sa.Integer(), nullable=True),
        sa.Column("foreign_pids", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["host"], ["hosts.name"], name=op.f("fk_gpus_host_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpus")),
        sa.UniqueConstraint("host", "index", name=op.f("uq_gpus_host_index")),
    )
    op.create_table(
        "gpu_leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("leased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_gpu_leases_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpu_leases")),
    )
    op.create_index(op.f("ix_gpu_leases_job_id"), "gpu_leases", ["job_id"], unique=False)
    op.create_index(
        "uq_gpu_leases_active",
        "gpu_leases",
        ["host", "gpu_index"],
        unique=True,
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("host", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("placed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("waiting_reason", sa.Text(), nullable=True))
        batch.create_index(batch.f("ix_jobs_host"), ["host"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_host"))
        batch.drop_column("waiting_reason")
        batch.drop_column("placed_at")
        batch.drop_column("host")
    op.drop_index("uq_gpu_leases_active", table_name="gpu_leases")
    op.drop_index(op.f("ix_gpu_leases_job_id"), table_name="gpu_leases")
    op.drop_table("gpu_leases")
    op.drop_table("gpus")
    op.drop_table("hosts")
