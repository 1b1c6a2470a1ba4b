"""Shared fixtures: an isolated data directory, migrated databases on both backends, Redis.

Tests that need PostgreSQL or Redis skip, saying why, when the server is not reachable;
with TRAINYARD_TEST_REQUIRE_SERVICES=1 (set by .ci/run) those skips become failures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import redis
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from app.core.config import get_settings
from app.core.db import get_engine, get_session_factory
from app.core.migrate import upgrade_database

REQUIRE_SERVICES = os.environ.get("TRAINYARD_TEST_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "TRAINYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TRAINYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str, why: object) -> NoReturn:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required here (TRAINYARD_TEST_REQUIRE_SERVICES=1): {why}")
    pytest.skip(f"{what} not reachable ({why}); set TRAINYARD_TEST_{what.upper()}_URL")


def clear_caches() -> None:
    for cached in (get_settings, get_engine, get_session_factory):
        cached.cache_clear()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        connection = admin.connect()
    except OperationalError as error:
        unavailable("postgres", str(error).splitlines()[0])
    name = f"trainyard_test_{uuid.uuid4().hex[:12]}"
    connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.close()
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        unavailable("redis", error)
    finally:
        client.close()
    return REDIS_URL


Configure = Callable[..., Path]


@pytest.fixture
def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """Point TRAINYARD_* at a fresh data directory (and optionally a database and broker),
    migrate the database, and reset the cached settings, engine and Celery app."""

    def apply(database_url: str = "", broker_url: str = "") -> Path:
        data_dir = tmp_path / "data"
        monkeypatch.setenv("TRAINYARD_DATA_DIR", str(data_dir))
        monkeypatch.setenv("TRAINYARD_DATABASE_URL", database_url)
        monkeypatch.setenv("TRAINYARD_BROKER_URL", broker_url)
        # A queue of its own: a shared Redis never hands this test's jobs to anyone else.
        monkeypatch.setenv("TRAINYARD_QUEUE", f"trainyard-test-{uuid.uuid4().hex[:8]}")
        monkeypatch.setenv("TRAINYARD_CANCEL_GRACE_SECONDS", "5")
        # The submission rate is kept per process by user id, and every test's users are
        # 1, 2, 3: off here, on in the tests of the limit itself.
        monkeypatch.setenv("TRAINYARD_SUBMIT_RATE_PER_MINUTE", "0")
        clear_caches()
        upgrade_database()
        return data_dir

    yield apply
    get_engine().dispose() if get_settings.cache_info().currsize else None
    clear_caches()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once per backend: SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return ""  # the embedded default under the data directory
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(configure: Configure, database_url: str) -> Path:
    """A migrated database on the parametrized backend; returns the data directory."""
    return configure(database_url=database_url)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(db: Path) -> dict[str, str]:
    """Tokens of alice and bob (users) and root (an admin), in the migrated database."""
    from app.core.users import create_user

    with get_session_factory()() as session:
        return {
            name: create_user(session, name, is_admin=name == "root")[1]
            for name in ("alice", "bob", "root")
        }


def register_test_host(name: str = "test-host", gpus: int = 4) -> None:
    """Register host `name` with `gpus` simulated GPUs, as its worker would at start."""
    from worker.gpus import discover
    from worker.inventory import register_host

    settings = get_settings().model_copy(update={"worker_name": name, "simulated_gpus": gpus})
    with get_session_factory()() as session:
        register_host(session, settings, discover(gpus)[0], "simulated")


def place_and_claim(job_id: int, host: str = "test-host") -> int:
    """Run a scheduling pass and claim `job_id` on `host` as its worker would; returns the
    attempt. The host must be registered (register_test_host)."""
    from app.core import lifecycle
    from worker.scheduler import schedule

    with get_session_factory()() as session:
        placed = schedule(session, get_settings())
        assert job_id in {p.job_id for p in placed}, f"job {job_id} was not placed: {placed}"
        claim = lifecycle.claim(session, job_id, host)
        assert claim is not None
        return claim.attempt
