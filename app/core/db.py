"""Engine and sessions: one engine per process, SQLite tuned for a few concurrent writers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from typing import Any, cast

from anyio import to_thread
from sqlalchemy import CursorResult, Engine, Result, Table, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import get_settings


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout, since API and worker share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(
        url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, connect_args=POSTGRES_TIMEOUTS
    )
    _ping_when_idle(engine)
    return engine


# Connections kept open, and how many more a burst may open (closed again when returned).
# Eight clients submitting at once kept a pool of 5 opening a new PostgreSQL connection (a
# server process) for every tenth submission.
POOL_SIZE = 10
POOL_OVERFLOW = 20

# A connection unused for this long is pinged before it is handed out (a database restart
# or a dropped link in between would otherwise fail the request that gets it). One in
# steady use is not: pinging every checkout cost a submission four round trips.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, for connections idle over PING_AFTER_IDLE_SECONDS only. A failed ping
    raises DisconnectionError: the pool then discards that connection and hands out another
    (SQLAlchemy's documented checkout-event recipe)."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is None or time.monotonic() - last_used < PING_AFTER_IDLE_SECONDS:
            return  # just opened, or just used
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise DisconnectionError(str(error)) from error
        if not alive:
            raise DisconnectionError("the connection failed its ping")


_LAST_USED = "trainyard_last_used"


# A database that drops packets must not hang a worker or the API: connecting gives up after
# 10 s, a statement after 60 s, and a connection whose peer went silent is dropped by TCP
# within about 30 s (keepalives while idle, a user timeout while sending).
POSTGRES_TIMEOUTS: dict[str, str | int] = {
    "connect_timeout": 10,
    "options": "-c statement_timeout=60000",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
}


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.database_url)


@lru_cache
def get_session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def session_scope() -> Iterator[Session]:
    """One session for the length of a `with` block."""
    with get_session_factory()() as session:
        yield session


async def request_session() -> AsyncIterator[Session]:
    """The API's session for one request. Closed in the event loop when the route left it
    without a transaction (nothing to roll back: no I/O), else in a worker thread. A sync
    generator dependency costs two thread hops per request, one for each end."""
    session = get_session_factory()()
    try:
        yield session
    finally:
        if session.in_transaction():
            await to_thread.run_sync(session.close)
        else:
            session.close()


def read_session() -> Session:
    """A session whose statements each commit on their own (autocommit): for a single
    read, one round trip instead of three (BEGIN, the statement, ROLLBACK)."""
    return _autocommit_sessions(get_engine())()


@lru_cache(maxsize=4)
def _autocommit_sessions(engine: Engine) -> sessionmaker[Session]:
    # The same pool as the engine's: each checkout turns autocommit on, its return turns it
    # off again (both client-side with psycopg and sqlite3).
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(bind=autocommit, expire_on_commit=False)


def table_of(mapped: type[Any]) -> Table:
    """The table an ORM class maps (typed as a Table, for Core INSERTs)."""
    table: Table = mapped.__table__
    return table


def new_row(table: Table, **given: Any) -> dict[str, Any]:
    """Every column of a new row of `table` but its primary key: `given`, else the column's
    default (None without one). Every column, so that an object built from the row has no
    attribute to load. A column whose default is computed must be given."""
    row = {}
    for column in table.columns:
        if column.key in given:
            row[column.key] = given[column.key]
        elif column.primary_key:
            continue
        elif column.default is None:
            row[column.key] = None
        elif column.default.is_scalar:
            row[column.key] = column.default.arg  # type: ignore[attr-defined]
        else:
            raise ValueError(f"{table.name}.{column.key}: its default is computed; give it")
    unknown = set(given) - set(row)
    if unknown:
        raise ValueError(f"{table.name} has no column {sorted(unknown)}")
    return row


def rows_changed(result: Result[Any]) -> int:
    """Rows an UPDATE/INSERT touched (`Session.execute` is typed as returning a plain Result)."""
    return cast("CursorResult[Any]", result).rowcount
