"""job_events.position: the order in which events became visible, which streams resume by

An event's id is taken when its row is inserted, so on PostgreSQL two transactions can
commit their events out of id order; a stream that had read past the later id would never
send the earlier one. `position` is given when the inserting transaction commits, under one
lock (a deferred trigger), so positions are in commit order: every event a reader has not
seen yet gets a position above all those it has. SQLite has one writer at a time, so its
position is the id (set by a plain trigger). Existing events keep their id as position.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# pg_advisory_xact_lock's key: "trainyard job_events" in ASCII, folded into a bigint.
LOCK_KEY = 0x7472_6169_6E79_6172

POSTGRESQL_FUNCTION = f"""
CREATE FUNCTION trainyard_job_events_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Held until the commit is visible: the next transaction's positions come after these.
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    UPDATE job_events SET position = nextval('job_events_position_seq') WHERE id = NEW.id;
    RETURN NULL;
END
$$
"""
# Deferred: it runs at COMMIT, after every other statement of the transaction, so the lock is
# the last one it takes (no lock cycle with row locks) and is held only while committing.
POSTGRESQL_TRIGGER = """
CREATE CONSTRAINT TRIGGER job_events_position AFTER INSERT ON job_events
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION trainyard_job_events_position()
"""
SQLITE_TRIGGER = """
CREATE TRIGGER job_events_position AFTER INSERT ON job_events
BEGIN
    UPDATE job_events SET position = NEW.id WHERE id = NEW.id;
END
"""


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    # Plain ADD COLUMN (no batch rebuild): the table keeps its AUTOINCREMENT on SQLite.
    op.add_column("job_events", sa.Column("position", sa.BigInteger(), nullable=True))
    op.execute("UPDATE job_events SET position = id")
    op.create_index("ix_job_events_position", "job_events", ["position"], unique=True)
    op.create_index("ix_job_events_job_id_position", "job_events", ["job_id", "position"])
    if postgresql:
        op.execute("CREATE SEQUENCE job_events_position_seq AS bigint")
        # Past every id ever handed out, not just those still stored: a client may hold the
        # id of an event deleted since (with its job) as its Last-Event-ID.
        op.execute(
            "SELECT setval('job_events_position_seq', greatest(1, "
            "(SELECT last_value FROM job_events_id_seq), "
            "(SELECT coalesce(max(id), 0) FROM job_events)))"
        )
        op.execute(POSTGRESQL_FUNCTION)
        op.execute(POSTGRESQL_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER job_events_position ON job_events")
        op.execute("DROP FUNCTION trainyard_job_events_position()")
        op.execute("DROP SEQUENCE job_events_position_seq")
    else:
        op.execute("DROP TRIGGER job_events_position")
    op.drop_index("ix_job_events_job_id_position", table_name="job_events")
    op.drop_index("ix_job_events_position", table_name="job_events")
    op.drop_column("job_events", "position")
