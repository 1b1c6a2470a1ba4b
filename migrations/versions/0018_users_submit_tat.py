"""users.submit_tat: the submission rate's state on the user's row

The per-user submission rate was counted in each API process's memory, so N API processes
allowed N times the rate. The rate's one number (app/core/submit_rate.py) now lives on the
user's row and moves under the lock every submission takes. NULL: no recent submission.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("submit_tat", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("submit_tat")
