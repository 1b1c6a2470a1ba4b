"""job_tally: jobs counted by status and priority, kept by triggers on jobs

A page of jobs reports how many there are, and a queued job its place in the queue. Both
were counts over the jobs table: an index scan of every job (100,000 for an admin's list)
or of every queued job ahead (each fetched from the heap while the visibility map is not
set, 6 ms of the database's time per submission at 12,000 queued).

Triggers append a +1 row for each job's (status, priority) when it is inserted and a -1
row for what it leaves, so a count is a sum over a few rows. Only rows are appended:
concurrent transactions never wait on each other's counter (a counter row updated in place
would be a hot row that every submission locks until it commits, and a deadlock partner of
every transaction that changes several jobs). A scheduling pass folds the rows into one per
(status, priority) (app/core/job_tally.py).

A rebuild of the jobs table on SQLite (op.batch_alter_table) drops its triggers: a later
migration that rebuilds it must create them again.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSTGRES_FUNCTION = """
CREATE FUNCTION trainyard_job_tally() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM job_tally;
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO job_tally (status, priority, delta) VALUES (OLD.status, OLD.priority, -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO job_tally (status, priority, delta) VALUES (NEW.status, NEW.priority, 1);
    END IF;
    RETURN NULL;
END
$$
"""
# Row triggers; the update one only fires when the status or priority changes (PostgreSQL
# checks WHEN without calling the function), not on heartbeats and waiting reasons.
POSTGRES_TRIGGERS = (
    "CREATE TRIGGER jobs_tally AFTER INSERT OR DELETE ON jobs "
    "FOR EACH ROW EXECUTE FUNCTION trainyard_job_tally()",
    "CREATE TRIGGER jobs_tally_update AFTER UPDATE OF status, priority ON jobs FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.priority IS DISTINCT FROM NEW.priority) "
    "EXECUTE FUNCTION trainyard_job_tally()",
    # TRUNCATE (which fires no row triggers) empties the tally with the table.
    "CREATE TRIGGER jobs_tally_truncate AFTER TRUNCATE ON jobs "
    "FOR EACH STATEMENT EXECUTE FUNCTION trainyard_job_tally()",
)
_ADD = "INSERT INTO job_tally (status, priority, delta) VALUES ({0}.status, {0}.priority, {1});"
SQLITE_TRIGGERS = (
    f"CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs BEGIN {_ADD.format('NEW', 1)} END",
    f"CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs BEGIN {_ADD.format('OLD', -1)} END",
    "CREATE TRIGGER jobs_tally_update AFTER UPDATE OF status, priority ON jobs "
    "WHEN OLD.status IS NOT NEW.status OR OLD.priority IS NOT NEW.priority "
    f"BEGIN {_ADD.format('OLD', -1)} {_ADD.format('NEW', 1)} END",
)


BACKFILL = (
    "INSERT INTO job_tally (status, priority, delta) "
    "SELECT status, priority, count(*) FROM jobs GROUP BY status, priority"
)


def upgrade() -> None:
    op.create_table(
        "job_tally",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_job_tally"),
        sqlite_autoincrement=True,
    )
    # No job may change between the count of the jobs there are and the triggers: it would
    # be counted twice, or not at all. PostgreSQL: writers to jobs wait from this lock to
    # the commit. SQLite: the count's INSERT begins the transaction (Python's sqlite3 begins
    # one before a write, not before CREATE) and takes the one write lock until the commit.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
        op.execute(BACKFILL)
        op.execute(POSTGRES_FUNCTION)
        for trigger in POSTGRES_TRIGGERS:
            op.execute(trigger)
    else:
        op.execute(BACKFILL)
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER jobs_tally_truncate ON jobs")
        op.execute("DROP TRIGGER jobs_tally_update ON jobs")
        op.execute("DROP TRIGGER jobs_tally ON jobs")
        op.execute("DROP FUNCTION trainyard_job_tally()")
    else:
        for name in ("jobs_tally_insert", "jobs_tally_delete", "jobs_tally_update"):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("job_tally")
