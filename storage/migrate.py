"""Schema migrations, run programmatically (Alembic configured in code; no alembic.ini on disk).

Public API
  upgrade(url=None, revision="head") -> str   `alembic upgrade head`; idempotent; returns the revision now current
  current_revision(url=None) -> str | None   None for a database that was never migrated
  head_revision() -> str            the newest revision shipped in storage/migrations/versions
  alembic_config(url=None) -> alembic.config.Config   for `alembic revision --autogenerate` by developers

Every process that opens the database (worker, dashboard, CLI commands that write) calls upgrade()
first; at head it only reads the version table.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage.engine import get_engine, get_read_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing into this package; ``url`` travels as an attribute (no %-escaping)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    """The head revision of the migration scripts shipped with this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "storage/migrations/versions holds no revision"
    return head


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None if it has no alembic_version table yet)."""
    with get_read_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str | None = None, revision: str = "head") -> str:
    """Bring the database to the newest schema (or to ``revision``) and return its revision.
    Safe to call repeatedly."""
    engine = get_engine(url)
    with engine.connect() as connection:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
    revision = current_revision(url)
    assert revision is not None
    return revision
