"""Engine and sessions: one engine per process, SQLite tuned for a few concurrent writers."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
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
    return create_engine(url, pool_pre_ping=True, connect_args=POSTGRES_TIMEOUTS)


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
    """One session for the length of a request (the API's dependency) or a `with` block."""
    with get_session_factory()() as session:
        yield session


def rows_changed(result: Result[Any]) -> int:
    """Rows an UPDATE/INSERT touched (`Session.execute` is typed as returning a plain Result)."""
    return cast("CursorResult[Any]", result).rowcount
