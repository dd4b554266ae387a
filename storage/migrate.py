"""Schema migrations, run programmatically (Alembic configured in code; no alembic.ini on disk).

Public API
  upgrade(url=None, revision="head") -> str   `alembic upgrade head`; idempotent; returns the revision now current
  schema_is_current(url=None) -> bool   the database is at HEAD_REVISION (plain SQL, Alembic not imported)
  current_revision(url=None) -> str | None   None for a database that was never migrated
  head_revision() -> str            the newest revision shipped in storage/migrations/versions
  alembic_config(url=None) -> alembic.config.Config   for `alembic revision --autogenerate` by developers
  HEAD_REVISION                     head_revision() known statically (tests/storage/test_migrate.py keeps them equal)

Every process that opens the database (worker, dashboard, CLI commands that write) calls upgrade()
first. At head it reads the alembic_version table with one plain query and returns: importing Alembic
costs about half a second, which a short command (`selfheal register`) would otherwise pay every time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from storage.engine import get_engine, get_read_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest revision in storage/migrations/versions. A new migration must update it: the test that
# compares it with Alembic's script directory fails until it does.
HEAD_REVISION = "0008"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing into this package; ``url`` travels as an attribute (no %-escaping)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    """The head revision of the migration scripts shipped with this package (read by Alembic)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "storage/migrations/versions holds no revision"
    return head


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None if it has no alembic_version table yet)."""
    from alembic.runtime.migration import MigrationContext

    with get_read_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_is_current(url: str | None = None) -> bool:
    """True when the database's alembic_version holds exactly HEAD_REVISION. A missing table (a new
    database) or any other answer is False, and upgrade() lets Alembic decide what to do."""
    try:
        with get_read_engine(url).connect() as connection:
            versions = [row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")]
    except sa.exc.DBAPIError:
        return False  # no such table (SQLite: OperationalError, PostgreSQL: ProgrammingError)
    return versions == [HEAD_REVISION]


def upgrade(url: str | None = None, revision: str = "head") -> str:
    """Bring the database to the newest schema (or to ``revision``) and return its revision.
    Safe to call repeatedly; at head it costs one query and no Alembic import."""
    if revision in ("head", HEAD_REVISION) and schema_is_current(url):
        return HEAD_REVISION
    from alembic import command

    engine = get_engine(url)
    with engine.connect() as connection:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
    revision = current_revision(url)
    assert revision is not None
    return revision
