"""Schema truth: the migrations alone build the schema that app/core/models.py declares.

The app never calls `create_all`; databases are built only by `alembic upgrade head`. These
tests guard against the two drifting apart (a model change without its migration, or a
migration that creates something the models do not declare), on SQLite and on PostgreSQL,
and against migrations importing app code, which would make old migrations change meaning
whenever that code changes.

The other tests' databases are copies of a template built by the same migrations once per
session (tests/conftest.py); here the migrations run in the test, on an empty database.
"""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path
from pprint import pformat
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError

from app.core.db import get_engine, make_engine
from app.core.migrate import MIGRATIONS_DIR, alembic_config
from app.core.models import Base


def test_migrations_match_models(db_from_migrations: Path) -> None:
    with get_engine().connect() as connection:
        context = MigrationContext.configure(
            connection,
            # Types matter (a String length or a lost timezone is real drift). Server defaults
            # are left out: the migrations add NOT NULL columns with server_default="0" to fill
            # existing rows, while the models set defaults on the Python side.
            opts={"compare_type": True, "compare_server_default": False},
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], (
        f"models and migrations differ on {connection.dialect.name}; add a migration:\n"
        + pformat(differences)
    )


def _normalized(where: object) -> str:
    # PostgreSQL reflects "(released_at IS NULL)" and "((status)::text = 'queued'::text)";
    # SQLite gives back the clause as written.
    return re.sub(r"::\w+|[\s()]", "", str(where)).lower()


def test_partial_indexes_keep_their_where(db_from_migrations: Path) -> None:
    """compare_metadata matches indexes by name, columns and uniqueness only; a partial
    index that lost its WHERE (one active lease per GPU would become one lease per GPU,
    ever) goes unnoticed there, so the predicate is compared here."""
    engine = get_engine()
    dialect = engine.dialect.name
    inspector = inspect(engine)
    checked = 0
    for table in Base.metadata.tables.values():
        declared = {
            index.name: index.dialect_options[dialect]["where"]
            for index in table.indexes
            if index.dialect_options[dialect]["where"] is not None
        }
        if not declared:
            continue
        reflected = {
            index["name"]: index.get("dialect_options", {}).get(f"{dialect}_where")
            for index in inspector.get_indexes(table.name)
        }
        for name, where in declared.items():
            assert _normalized(reflected.get(name)) == _normalized(where), (
                f"{table.name}.{name} on {dialect}: "
                f"declared WHERE {where}, database has {reflected.get(name)}"
            )
            checked += 1
    assert checked, "no partial index found in the models; is this test still needed?"


def _app_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if any(module == "app" or module.startswith("app.") for module in modules):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_migrations_do_not_import_app_code() -> None:
    # A migration must keep creating what it created when written; app code moves on.
    files = sorted((MIGRATIONS_DIR / "versions").glob("*.py"))
    assert files, f"no migrations found under {MIGRATIONS_DIR}"
    offending = [line for path in files for line in _app_imports(path)]
    assert not offending, "migrations import app code:\n" + "\n".join(offending)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrades_keep_the_rows_of_an_existing_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An upgrade keeps what a running service recorded. On SQLite, batch mode rebuilds a
    table by dropping it; with foreign keys on, that once emptied epochs and leases."""
    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    config = alembic_config(url)
    command.upgrade(config, "0006")  # the last schema before the jobs table was rebuilt
    engine = make_engine(url)
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO users (id, name, is_admin, token_hash, created_at) "
            "VALUES (1, 'alice', false, 'h', '2026-11-01')",
            "INSERT INTO jobs (id, owner_id, status, priority, spec, attempt, lost_runs, "
            "created_at) VALUES (1, 1, 'succeeded', 0, '{}', 1, 0, '2026-11-01')",
            "INSERT INTO epochs (job_id, epoch, attempt, recorded_at) "
            "VALUES (1, 1, 1, '2026-11-01')",
            "INSERT INTO hosts (name, queue, simulated, gpu_source, cpu_slots, started_at, "
            "last_heartbeat) VALUES ('h', 'q', true, 'simulated', 1, '2026-11-01', '2026-11-01')",
            "INSERT INTO gpu_leases (job_id, attempt, host, gpu_index, leased_at, released_at) "
            "VALUES (1, 1, 'h', 0, '2026-11-01', '2026-11-01')",
        ):
            connection.execute(text(statement))
    command.upgrade(config, "head")
    with engine.connect() as connection:
        counts = {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("users", "jobs", "epochs", "gpu_leases")
        }
        tally = connection.execute(
            text("SELECT status, priority, sum(delta) FROM job_tally GROUP BY status, priority")
        ).all()
    engine.dispose()
    assert counts == {"users": 1, "jobs": 1, "epochs": 1, "gpu_leases": 1}
    assert [tuple(row) for row in tally] == [("succeeded", 0, 1)]  # the jobs already there


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_jobs_written_while_the_tally_is_created_are_counted_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Before each statement of migration 0019 from its table on, another connection tries
    to add a job. A job both counted among those there were and seen by the new triggers
    would be counted twice: while the migration counts and creates the triggers, the writer
    waits for its lock (and gives up here after 0.2 s)."""
    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    command.upgrade(alembic_config(url), "0018")
    args = {"timeout": 0.2} if backend == "sqlite" else {"options": "-c lock_timeout=200"}
    writer = create_engine(url, connect_args=args)
    with writer.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, name, is_admin, token_hash, created_at) "
                "VALUES (1, 'alice', false, 'h', '2026-11-01')"
            )
        )
    outcomes: list[str] = []

    def add_a_job() -> None:
        try:
            with writer.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO jobs (owner_id, status, priority, spec, gpus, attempt, "
                        "lost_runs, created_at, log_lines, log_dropped, events_dropped_upto) "
                        "VALUES (1, 'queued', 0, '{}', 0, 0, 0, '2026-11-01', 0, 0, 0)"
                    )
                )
            outcomes.append("added")
        except OperationalError:
            outcomes.append("waited")

    def before(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if connection.engine is not writer and re.search(r"job_tally|TRIGGER|LOCK", statement):
            thread = threading.Thread(target=add_a_job)  # another connection, as a process
            thread.start()
            thread.join()

    event.listen(Engine, "before_cursor_execute", before)
    try:
        command.upgrade(alembic_config(url), "0019")
    finally:
        event.remove(Engine, "before_cursor_execute", before)
    with writer.connect() as connection:
        jobs = connection.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        tally = connection.execute(text("SELECT sum(delta) FROM job_tally")).scalar_one()
    writer.dispose()
    assert "added" in outcomes and "waited" in outcomes, outcomes
    assert tally == jobs


def test_the_other_tests_databases_are_at_the_migrations_head(db: Path) -> None:
    """`db` is a copy of a template (tests/conftest.py), not a run of the migrations: it must
    be the migrations' current head, not a template left from older migrations."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    with get_engine().connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head
