"""Schema truth: the migrations alone build the schema that app/core/models.py declares.

The app never calls `create_all`; databases are built only by `alembic upgrade head`. These
tests guard against the two drifting apart (a model change without its migration, or a
migration that creates something the models do not declare), on SQLite and on PostgreSQL,
and against migrations importing app code, which would make old migrations change meaning
whenever that code changes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from pprint import pformat

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.core.db import get_engine
from app.core.migrate import MIGRATIONS_DIR
from app.core.models import Base


def test_migrations_match_models(db: Path) -> None:
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
    # PostgreSQL reflects "(released_at IS NULL)"; SQLite gives back the clause as written.
    return re.sub(r"[\s()]", "", str(where)).lower()


def test_partial_indexes_keep_their_where(db: Path) -> None:
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
