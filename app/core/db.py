"""Engine and sessions: one engine per process, SQLite tuned for a few concurrent writers."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any, cast
from weakref import WeakKeyDictionary

from anyio import CapacityLimiter, to_thread
from sqlalchemy import CursorResult, Engine, Result, Table, create_engine, event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import DATABASE_MAX_OVERFLOW, DATABASE_POOL_SIZE, get_settings


def make_engine(
    url: str, pool_size: int = DATABASE_POOL_SIZE, max_overflow: int = DATABASE_MAX_OVERFLOW
) -> Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout, since API and worker share it.
    PostgreSQL: `pool_size` connections kept, `max_overflow` more in a burst."""
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
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args=POSTGRES_TIMEOUTS,
        # Said, not assumed from the server's default: a submission checks the owner's
        # active jobs after locking the owner's row, in the transaction of its earlier
        # reads, which is right only if each statement reads afresh.
        isolation_level="READ COMMITTED",
    )
    _ping_when_in_doubt(engine)
    return engine


# A connection unused for this long is pinged before it is handed out (a dropped link in
# between would otherwise fail the request that gets it). One in steady use is not, unless
# the server has spoken on it unasked: pinging every checkout cost a submission four round
# trips.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_in_doubt(engine: Engine) -> None:
    """pool_pre_ping, only for a connection idle over PING_AFTER_IDLE_SECONDS or whose socket
    has something to read between requests: the notice a server sends every session when
    it shuts down, or the end of the stream. (Pooled connections never LISTEN, so nothing
    else arrives unasked.) A failed ping raises InvalidatePoolError: the pool replaces that
    connection and every one opened before it (a restart ended them all), as pre-ping
    does, and hands out a new one."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is None:
            return  # just opened
        idle = time.monotonic() - last_used >= PING_AFTER_IDLE_SECONDS
        if not idle and not _readable(dbapi_connection.fileno()):
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise InvalidatePoolError(str(error)) from error
        if not alive:
            raise InvalidatePoolError("the connection failed its ping")


def _readable(fd: int) -> bool:
    poller = select.poll()  # not select.select: it fails on descriptors past 1023
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


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
    return make_engine(
        settings.database_url, settings.database_pool_size, settings.database_max_overflow
    )


@lru_cache
def get_session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


async def request_session() -> AsyncIterator[Session]:
    """The API's session for one request. Closed in the event loop when the route left it
    without a transaction (nothing to roll back: no I/O), else in a worker thread of its own
    limiter. A sync generator dependency costs two thread hops per request, one for each
    end. The limiter: were the close to wait for one of the threads that routes use, a burst
    of routes blocked waiting for a pooled connection could hold every thread while the
    connections they wait for are held by requests waiting to close."""
    session = get_session_factory()()
    try:
        yield session
    finally:
        if session.in_transaction():
            await to_thread.run_sync(session.close, limiter=_closing_limiter())
        else:
            session.close()


def _closing_limiter() -> CapacityLimiter:
    loop = asyncio.get_running_loop()  # anyio's limiters belong to one event loop
    limiter = _CLOSING.get(loop)
    if limiter is None:
        limiter = _CLOSING[loop] = CapacityLimiter(CLOSING_THREADS)
    return limiter


CLOSING_THREADS = 8
_CLOSING: WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = WeakKeyDictionary()


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
    attribute to load. A column whose default is computed, or the server's, must be given."""
    row = {}
    for column in table.columns:
        if column.key in given:
            row[column.key] = given[column.key]
        elif column.primary_key:
            continue
        elif column.default is None and column.server_default is not None:
            # An explicit NULL would override it: the database's default must stay its own.
            raise ValueError(f"{table.name}.{column.key}: its default is the server's; give it")
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
