"""the artifact store's database backend (artifacts, artifact_chunks); datasets.sha256

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_artifacts"),
    )
    op.create_table(
        "artifact_chunks",
        sa.Column("key", sa.String(length=600), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("key", "seq", name="pk_artifact_chunks"),
    )
    # Plain ADD COLUMN (no batch rebuild): datasets keeps its AUTOINCREMENT on SQLite.
    op.add_column("datasets", sa.Column("sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("sha256")
    op.drop_table("artifact_chunks")
    op.drop_table("artifacts")
