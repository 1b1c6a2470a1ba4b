"""Shared fixtures: an isolated data directory, migrated databases on both backends, Redis.

Each test gets a database of its own, already migrated: a copy of a template that the
migrations built once (SQLite: a file built once per session and copied; PostgreSQL: a
database named after a hash of migrations/, cloned with CREATE DATABASE ... TEMPLATE, the
next tests' clones made, and used ones dropped, in threads while the tests run).
tests/test_schema.py runs the migrations themselves on an empty database instead.

Tests that need PostgreSQL or Redis skip, saying why, when the server is not reachable;
with TRAINYARD_TEST_REQUIRE_SERVICES=1 (set by .ci/run) those skips become failures.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import NoReturn

import pytest
import redis
from alembic import command
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError

from app.core.config import get_settings
from app.core.db import get_engine, get_session_factory
from app.core.migrate import MIGRATIONS_DIR, alembic_config, upgrade_database

REQUIRE_SERVICES = os.environ.get("TRAINYARD_TEST_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "TRAINYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TRAINYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

TEMPLATE_PREFIX = "trainyard_template_"
# Templates of other migrations (another checkout, an older commit) that no test session has
# used for this long are dropped when a template is built. One dropped while still in use is
# rebuilt by the session that needs it (PostgresTemplate.clone).
STALE_TEMPLATE_SECONDS = 24 * 3600


# Slow kinds of test first, in this order (the rest keep their order after them). pytest-xdist
# hands each process a contiguous share of the list and lets an idle one steal from the
# other's tail: with the long tests at the head, the last ones to run are short, so neither
# process waits out a minute-long training the other started last.
SLOW_FIRST = ("training", "chaos")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        marks = {mark.name for mark in item.iter_markers()}
        return next((n for n, name in enumerate(SLOW_FIRST) if name in marks), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: each kind keeps its files' order


def unavailable(what: str, why: object) -> NoReturn:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required here (TRAINYARD_TEST_REQUIRE_SERVICES=1): {why}")
    pytest.skip(f"{what} not reachable ({why}); set TRAINYARD_TEST_{what.upper()}_URL")


def clear_caches() -> None:
    for cached in (get_settings, get_engine, get_session_factory):
        cached.cache_clear()


def run_migrations(database_url: str) -> None:
    """`alembic upgrade head` on `database_url`, as upgrade_database does."""
    command.upgrade(alembic_config(database_url), "head")


def migrations_digest() -> str:
    """A hash of every file under migrations/: a migration changed, added or removed gives
    another template name, so the template is built again from the migrations."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(MIGRATIONS_DIR).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def postgres_database_url(name: str) -> str:
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


class PostgresTemplate:
    """A database the migrations built, named after migrations_digest(), that each test's
    database is cloned from. Test sessions running at once (several checkouts, one server)
    share it: it is built under a name of its own and renamed into place when complete, so
    no session ever clones a half-migrated template, and the first rename wins."""

    def __init__(self, admin: Engine) -> None:
        self.admin = admin
        self.name = TEMPLATE_PREFIX + migrations_digest()

    def _execute(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        with self.admin.connect() as connection:
            result = connection.execute(text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []

    def _exists(self, name: str) -> bool:
        return bool(self._execute("SELECT 1 FROM pg_database WHERE datname = :n", n=name))

    def _stamp(self, name: str) -> None:
        # When a session last used it (shared catalog: no connection to it needed).
        self._execute(f"COMMENT ON DATABASE \"{name}\" IS 'trainyard tests: {time.time():.0f}'")

    def ensure(self) -> None:
        """Build the template unless it exists; mark it used now."""
        if self._exists(self.name):
            self._stamp(self.name)
            return
        building = f"{self.name}_build_{uuid.uuid4().hex[:8]}"
        self._execute(f'CREATE DATABASE "{building}"')
        try:
            self._stamp(building)
            run_migrations(postgres_database_url(building))  # disconnects when done
            self._execute(f'ALTER DATABASE "{building}" RENAME TO "{self.name}"')
        except BaseException as error:
            self._execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
            if isinstance(error, DBAPIError) and self._exists(self.name):
                return  # another session renamed its build into place first
            raise
        self._drop_stale()

    def _drop_stale(self) -> None:
        rows = self._execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname LIKE :prefix AND datname <> :n",
            prefix=TEMPLATE_PREFIX.replace("_", "\\_") + "%",
            n=self.name,
        )
        for name, comment in rows:
            _, _, stamp = str(comment or "").rpartition(": ")
            if not stamp.isdigit() or time.time() - int(stamp) < STALE_TEMPLATE_SECONDS:
                continue  # in use lately, or being built right now (stamped first)
            with suppress(DBAPIError):  # still connected to: left for a later sweep
                self._execute(f'DROP DATABASE IF EXISTS "{name}"')

    def clone(self, name: str) -> None:
        """CREATE DATABASE `name` as a copy of the template."""
        for attempt in range(3):
            try:
                self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
                return
            except DBAPIError as error:
                # 3D000: dropped meanwhile by another session's sweep; 55006: someone is
                # connected to the template. Build it again or wait, then retry.
                if attempt == 2 or _sqlstate(error) not in ("3D000", "55006"):
                    raise
                time.sleep(0.5)
                self.ensure()


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the server's maintenance database, to create and drop
    databases."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        admin.connect().close()
    except OperationalError as error:
        unavailable("postgres", str(error).splitlines()[0])
    yield admin
    admin.dispose()


def new_database_name() -> str:
    return f"trainyard_test_{uuid.uuid4().hex[:12]}"


def drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class PostgresClones:
    """Fresh clones of the template, one per test. Creating and dropping a database costs
    the server a few hundred milliseconds of writes and syncs, so two threads do both while
    the tests run: the next tests' clones are made while this one runs, and a used one is
    dropped after its test, without the tests waiting for either. (Two at once: the server
    makes and drops about half as many again per second as with one.)"""

    AHEAD = 2  # clones kept ready

    def __init__(self, template: PostgresTemplate) -> None:
        self.template = template
        self._workers = ThreadPoolExecutor(2, thread_name_prefix="trainyard-test-databases")
        self._ready: deque[Future[str]] = deque()
        self._drops: list[Future[None]] = []

    def _make(self) -> str:
        name = new_database_name()
        self.template.clone(name)
        return name

    def take(self) -> str:
        """The name of a database nobody else has used (made for this test)."""
        next_one = self._ready.popleft() if self._ready else self._workers.submit(self._make)
        try:
            return next_one.result()
        finally:
            while len(self._ready) < self.AHEAD:  # for the next tests
                self._ready.append(self._workers.submit(self._make))

    def give_back(self, name: str) -> None:
        self._drops.append(self._workers.submit(drop_database, self.template.admin, name))

    def close(self) -> None:
        for ready in self._ready:
            with suppress(Exception):  # a clone that failed left nothing to drop
                self.give_back(ready.result())
        self._workers.shutdown(wait=True)
        failed = [str(future.exception()) for future in self._drops if future.exception()]
        assert not failed, f"test databases left behind, not dropped: {failed}"


@pytest.fixture(scope="session")
def postgres_clones(postgres_admin: Engine) -> Iterator[PostgresClones]:
    template = PostgresTemplate(postgres_admin)
    template.ensure()
    clones = PostgresClones(template)
    yield clones
    clones.close()


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = new_database_name()
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_database_url(name)
    finally:
        drop_database(postgres_admin, name)


@pytest.fixture
def migrated_postgres_url(postgres_clones: PostgresClones) -> Iterator[str]:
    """A fresh PostgreSQL database at the migrations' head (a clone of the template),
    dropped afterwards."""
    name = postgres_clones.take()
    try:
        yield postgres_database_url(name)
    finally:
        postgres_clones.give_back(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database file the migrations built, for `configure` to copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "trainyard.db"
    run_migrations(f"sqlite:///{path}")
    # The migrations' engine is disposed: SQLite has folded its write-ahead log into the
    # file, which alone is then the whole database.
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert not leftovers, f"the template is not one file: {leftovers}"
    return path


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
def configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Configure]:
    """Point TRAINYARD_* at a fresh data directory (and optionally a database and broker),
    migrate the database, and reset the cached settings, engine and Celery app.

    With `from_template=True` the migrations do not run: the database is already a copy of
    the migrated template (a PostgreSQL `database_url` from migrated_postgres_url), or, for
    the embedded SQLite database (`database_url` ""), the template's file is copied in."""

    def apply(database_url: str = "", broker_url: str = "", *, from_template: bool = False) -> Path:
        data_dir = tmp_path / "data"
        monkeypatch.setenv("TRAINYARD_DATA_DIR", str(data_dir))
        monkeypatch.setenv("TRAINYARD_DATABASE_URL", database_url)
        monkeypatch.setenv("TRAINYARD_BROKER_URL", broker_url)
        # A queue of its own: a shared Redis never hands this test's jobs to anyone else.
        monkeypatch.setenv("TRAINYARD_QUEUE", f"trainyard-test-{uuid.uuid4().hex[:8]}")
        monkeypatch.setenv("TRAINYARD_CANCEL_GRACE_SECONDS", "5")
        # Tests submit faster than the default rate allows: off here, on in the tests of
        # the limit itself.
        monkeypatch.setenv("TRAINYARD_SUBMIT_RATE_PER_MINUTE", "0")
        clear_caches()
        if not from_template:
            upgrade_database()
            return data_dir
        settings = get_settings()
        settings.ensure_dirs()
        if not database_url:
            template: Path = request.getfixturevalue("sqlite_template")
            shutil.copyfile(template, settings.data_dir / "trainyard.db")
        return data_dir

    yield apply
    get_engine().dispose() if get_settings.cache_info().currsize else None
    clear_caches()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once per backend: SQLite file, then PostgreSQL. The
    PostgreSQL database is migrated already (a clone of the template); the SQLite one is
    "": `configure(..., from_template=True)` copies the template's file into place."""
    if request.param == "sqlite":
        return ""  # the embedded default under the data directory
    return str(request.getfixturevalue("migrated_postgres_url"))


@pytest.fixture
def db(configure: Configure, database_url: str) -> Path:
    """A migrated database on the parametrized backend, a copy of the template the
    migrations built; returns the data directory."""
    return configure(database_url=database_url, from_template=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_from_migrations(configure: Configure, request: pytest.FixtureRequest) -> Path:
    """Like `db`, but the migrations run here, on an empty database (tests/test_schema.py)."""
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    return configure(database_url=url)


# Prepended to a `python -c` script, makes `import app` or `import worker` fail, as in a
# user's Python without Trainyard (the project's own virtualenv has it installed).
BLOCK_TRAINYARD = "import sys; sys.modules['app'] = sys.modules['worker'] = None; "


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
