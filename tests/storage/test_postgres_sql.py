"""What PostgreSQL is sent, checked without a server: the DDL, the locking SQL and the UTC type's binds.
(The database tests also run against a real server where one can be had: see tests/pg_server.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable
from sqlmodel import select

from storage.models import AuditHead, RunRequest, UTCDateTime, metadata

PG = postgresql.dialect()


def test_every_table_compiles_for_postgresql() -> None:
    ddl = {name: str(CreateTable(table).compile(dialect=PG)) for name, table in metadata.tables.items()}
    assert "created_at TIMESTAMP WITH TIME ZONE NOT NULL" in ddl["audit_events"]
    assert "\tvalues JSON," in ddl["tuning_intents"]  # non-reserved in PostgreSQL: no quoting needed
    assert "file_size BIGINT" in ddl["checks"]
    assert "CONSTRAINT uq_images_path UNIQUE (path)" in ddl["images"]


def test_locking_selects_render_for_update_on_postgresql_only() -> None:
    head = select(AuditHead).where(AuditHead.id == 1).with_for_update()
    assert str(head.compile(dialect=PG)).endswith("FOR UPDATE")
    assert "FOR UPDATE" not in str(head.compile(dialect=sqlite.dialect()))
    claim = select(RunRequest).where(RunRequest.status == "pending").limit(1).with_for_update(skip_locked=True)
    assert str(claim.compile(dialect=PG)).endswith("FOR UPDATE SKIP LOCKED")


def test_utc_datetime_binds_aware_on_postgresql_and_naive_utc_on_sqlite() -> None:
    kind = UTCDateTime()
    paris = datetime(2026, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert kind.process_bind_param(paris, PG) == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert kind.process_bind_param(paris, sqlite.dialect()) == datetime(2026, 6, 1, 12, 0)
    assert kind.process_bind_param(datetime(2026, 6, 1, 12, 0), PG) == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert kind.process_result_value(datetime(2026, 6, 1, 12, 0), sqlite.dialect()) == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert kind.process_result_value(paris, PG) == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
