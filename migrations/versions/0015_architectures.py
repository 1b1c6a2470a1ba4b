"""architectures: uploaded Keras architectures a job names by id

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "architectures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("public", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("output", sa.String(length=8), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("classes", sa.Integer(), nullable=False),
        sa.Column("params", sa.BigInteger(), nullable=False),
        sa.Column("has_weights", sa.Boolean(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_architectures_owner_id_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_architectures"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_architectures_owner_id", "architectures", ["owner_id"])


def downgrade() -> None:
    op.drop_index("ix_architectures_owner_id", table_name="architectures")
    op.drop_table("architectures")
