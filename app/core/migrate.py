"""Schema management: the schema is created and changed only by the Alembic migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.core.config import Settings, get_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(settings: Settings | None = None) -> None:
    """Apply every migration not yet applied (idempotent; safe on each start)."""
    settings = settings or get_settings()
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), "head")
