"""datasets get an owner and a public flag; SQLite never reuses a job or dataset id

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

    # Jobs and datasets can now be deleted. SQLite hands out max(id) + 1 unless the table is
    # AUTOINCREMENT, so a new job could take a deleted one's id (and its leftover files);
    # PostgreSQL's sequences never go back. Batch mode rebuilds the tables on SQLite only.
    # Last, and every later batch rebuild of these tables must pass the same table_kwargs,
    # or the rebuilt table loses AUTOINCREMENT.
    for table in ("jobs", "datasets"):
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            if op.get_bind().dialect.name == "sqlite":
                batch.alter_column("id", existing_type=sa.Integer(), autoincrement=True)

def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_owner_id")
        batch.drop_constraint("fk_datasets_owner_id_users", type_="foreignkey")
        batch.drop_column("public")
        batch.drop_column("owner_id")
