"""The PostgreSQL connection pool: connections are reused under a burst of concurrent
requests, pinged only after sitting idle, and one that died while idle is replaced without
the request that takes it noticing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.core import db
from app.core.db import make_engine


@pytest.fixture
def engine(postgres_url: str) -> Any:
    made = make_engine(postgres_url)
    yield made
    made.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_eight_concurrent_clients_keep_their_connections(engine: Engine) -> None:
    # A pool smaller than the concurrency closes every connection it cannot keep when it is
    # returned, and opens a new one (a new server process) for the next request.
    pids: set[int] = set()
    lock = threading.Lock()
    start = threading.Barrier(8)

    def client() -> None:
        start.wait()
        for _ in range(25):
            with engine.connect() as connection:
                pid = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
            with lock:
                pids.add(pid)
            time.sleep(0.005)  # a request's own work, between its reads and writes

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pids) <= 8, f"{len(pids)} connections opened for 8 concurrent clients"


def test_only_connections_idle_for_a_while_are_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[float] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(time.monotonic())
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    for _ in range(20):
        backend_pid(engine)
    assert pings == []  # in steady use: no round trip before each request
    time.sleep(0.3)
    backend_pid(engine)
    assert len(pings) == 1


def test_a_connection_that_died_while_idle_is_replaced_unseen(
    engine: Engine, postgres_admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    first = backend_pid(engine)
    with postgres_admin.connect() as admin:  # as a server restart ends every session
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    time.sleep(0.3)
    assert backend_pid(engine) != first  # answered, by a fresh connection
