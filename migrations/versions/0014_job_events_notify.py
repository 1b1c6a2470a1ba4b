"""On PostgreSQL, every insert into job_events sends NOTIFY trainyard_events (on commit), so
the API's event streams wake at once instead of polling

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A statement-level trigger: one notification per INSERT statement, and PostgreSQL folds the
# identical ones of a transaction into one, delivered when (and only if) it commits.
FUNCTION = """
CREATE FUNCTION trainyard_job_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('trainyard_events', '');
    RETURN NULL;
END
$$
"""
TRIGGER = """
CREATE TRIGGER job_events_notify AFTER INSERT ON job_events
FOR EACH STATEMENT EXECUTE FUNCTION trainyard_job_events_notify()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)
        op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER job_events_notify ON job_events")
        op.execute("DROP FUNCTION trainyard_job_events_notify()")
