"""datasets get an owner and a public flag

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        # Uploads from before owners existed were visible to every user: they stay shared
        # (an admin can delete them); new uploads are private unless asked otherwise.
        batch.add_column(
            sa.Column("public", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.create_foreign_key(
            "fk_datasets_owner_id_users", "users", ["owner_id"], ["id"]
        )
        batch.create_index("ix_datasets_owner_id", ["owner_id"])
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("public", server_default=sa.false())


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_owner_id")
        batch.drop_constraint("fk_datasets_owner_id_users", type_="foreignkey")
        batch.drop_column("public")
        batch.drop_column("owner_id")
