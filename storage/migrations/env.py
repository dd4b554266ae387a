"""Alembic environment for selfheal (driven from storage.migrate; no alembic.ini needed).

storage.migrate passes either an open Connection (``config.attributes["connection"]``) or a URL
(``config.attributes["url"]``). Migrations run inside one write transaction: on SQLite that is a
BEGIN IMMEDIATE (see storage.engine), on PostgreSQL a transaction-scoped advisory lock, so two
processes upgrading the same fresh database at once cannot both create the tables.
"""

from __future__ import annotations

from alembic import context

from storage.engine import get_engine
from storage.models import metadata

# Any constant works; it only has to be the same for every selfheal process.
PG_MIGRATION_LOCK = 0x5E1F4EA1


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
        compare_type=True,
    )
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with get_engine(context.config.attributes.get("url")).connect() as connection:
        _run(connection)


if context.is_offline_mode():
    raise SystemExit("selfheal migrations run online only (storage.migrate.upgrade)")
run_migrations_online()
