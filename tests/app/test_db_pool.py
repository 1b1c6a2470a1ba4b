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
        return backend_pid_of(connection)


def test_eight_concurrent_clients_keep_their_connections(engine: Engine) -> None:
    # A pool smaller than the concurrency closes every connection it cannot keep when it is
    # returned, and opens a new one (a new server process) for the next request.
    pids: set[int] = set()
    lock = threading.Lock()
    start = threading.Barrier(8)

    def client() -> None:
        start.wait()
        for _ in range(25):
            pid = backend_pid(engine)
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
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 60.0)
    for _ in range(20):
        backend_pid(engine)
    assert pings == []  # in steady use: no round trip before each request
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.05)
    time.sleep(0.1)
    backend_pid(engine)
    assert len(pings) == 1


def test_a_connection_that_died_while_idle_is_replaced_unseen(
    engine: Engine, postgres_admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    monkeypatch.setattr(db, "_readable", lambda _fd: False)  # a silent drop: no notice
    first = backend_pid(engine)
    terminate(postgres_admin, [first])
    time.sleep(0.3)
    assert backend_pid(engine) != first  # answered, by a fresh connection


def test_connections_in_steady_use_survive_a_server_restart_unseen(
    engine: Engine, postgres_admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Used a moment ago, so not pinged for being idle: the notice each session gets as the
    # server shuts down, waiting on its socket, is what tells.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 60.0)
    with engine.connect() as one, engine.connect() as two, engine.connect() as three:
        before = {backend_pid_of(c) for c in (one, two, three)}
    terminate(postgres_admin, sorted(before))  # as a restart ends every session
    time.sleep(0.2)  # the notices arrive
    with engine.connect() as one, engine.connect() as two, engine.connect() as three:
        after = {backend_pid_of(c) for c in (one, two, three)}
    assert not before & after  # every one replaced, and no request failed


def backend_pid_of(connection: Any) -> int:
    return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(admin_engine: Engine, pids: list[int]) -> None:
    with admin_engine.connect() as admin:
        for pid in pids:
            # Waits (up to 5 s) until the backend has exited, its notice sent.
            admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
