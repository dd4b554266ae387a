"""Migrations: empty → head, idempotent, and the migrated schema equals the SQLModel metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import select

from storage.audit import GENESIS_HASH
from storage.engine import get_engine, get_read_engine
from storage.migrate import current_revision, head_revision, upgrade
from storage.models import metadata

EXPECTED_TABLES = {
    "alembic_version", "alerts", "api_tokens", "audit_events", "audit_head", "check_summaries", "checks", "heals", "images", "leader_jobs", "promotions",
    "login_attempts", "promotion_watches", "run_requests", "tuning_blocked", "tuning_candidates", "tuning_intents", "tuning_rate_limits", "tuning_runs", "worker_heartbeats",
}


def test_empty_database_to_head_and_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm' / 'selfheal.db'}"
    assert current_revision(url) is None
    assert head_revision() == "0008"
    assert upgrade(url) == "0008"
    assert current_revision(url) == "0008"
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("INSERT INTO run_requests (kind, target, requested_by, status, created_at) "
                             "VALUES ('check', '/a', 'op', 'pending', '2026-01-01 00:00:00.000000')")
    assert upgrade(url) == "0008"  # second run: nothing re-created, data kept
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM run_requests").scalar_one() == 1
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one() == 1
        assert conn.exec_driver_sql("SELECT id, seq, last_event_id, last_hash FROM audit_head").all() == [(1, 0, None, GENESIS_HASH)]


def test_migrated_schema_equals_the_models(db_url: str) -> None:
    with get_read_engine(db_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, metadata) == []

        inspector = sa.inspect(conn)
        assert set(inspector.get_table_names()) == EXPECTED_TABLES
        assert set(metadata.tables) == EXPECTED_TABLES - {"alembic_version"}
        for name, table in metadata.tables.items():
            reflected = {c["name"]: c for c in inspector.get_columns(name)}
            assert list(reflected) == [c.name for c in table.columns], name
            for column in table.columns:
                assert reflected[column.name]["nullable"] == column.nullable, f"{name}.{column.name}"
            # PostgreSQL also reports the index behind each UNIQUE constraint; the constraints are compared below.
            indexes = {(ix["name"], tuple(ix["column_names"]), bool(ix["unique"])) for ix in inspector.get_indexes(name)
                       if not ix.get("duplicates_constraint")}
            assert indexes == {(ix.name, tuple(c.name for c in ix.columns), bool(ix.unique)) for ix in table.indexes}, name
            uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
            assert uniques == {tuple(c.name for c in u.columns) for u in table.constraints if isinstance(u, sa.UniqueConstraint)}
            fks = {(tuple(f["constrained_columns"]), f["referred_table"]) for f in inspector.get_foreign_keys(name)}
            assert fks == {(tuple(f.parent.name for f in fk.elements), fk.referred_table.name) for fk in table.foreign_key_constraints}


def test_dashboard_indexes_exist(db_url: str) -> None:
    with get_read_engine(db_url).connect() as conn:
        inspector = sa.inspect(conn)
        names = {t: {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(t)} for t in inspector.get_table_names()}
    assert names["checks"]["ix_checks_image_id_created_at"] == ["image_id", "created_at"]
    assert names["checks"]["ix_checks_created_at"] == ["created_at"]
    assert names["audit_events"]["ix_audit_events_created_at"] == ["created_at"]
    assert names["audit_events"]["ix_audit_events_kind_created_at"] == ["kind", "created_at"]
    assert names["alerts"]["ix_alerts_created_at"] == ["created_at"]
    assert names["run_requests"]["ix_run_requests_status_created_at"] == ["status", "created_at"]
    assert names["promotions"]["ix_promotions_status_created_at"] == ["status", "created_at"]


def test_concurrent_upgrades_of_a_fresh_database_both_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.storage._workers import run_in_processes

    # The second upgrade waits for the first one's BEGIN IMMEDIATE: give it more than the 5 s default on a
    # loaded machine (it failed once in a run of tests/worker + tests/storage, and passed 14 times since).
    monkeypatch.setenv("SELFHEAL_DB_BUSY_TIMEOUT_MS", "60000")
    url = f"sqlite:///{tmp_path / 'race.db'}"
    assert run_in_processes([(upgrade, (url,)), (upgrade, (url,))]) == ["0008", "0008"]
    assert current_revision(url) == "0008"


def test_0002_widens_heal_actions_and_keeps_existing_rows(db_url: str, request: pytest.FixtureRequest) -> None:
    """A database created at 0001 with data in it upgrades to 0002 without losing a row, and then takes
    a custom action's full module:function name (PostgreSQL refused more than 32 characters before)."""
    from storage import queries
    from storage.engine import dispose_engines, session_scope
    from storage.models import Heal

    # db_url is at head: build a second database at 0001 on the same backend.
    if db_url.startswith("sqlite"):
        url = db_url.replace("selfheal.db", "old.db")
    else:
        url = request.getfixturevalue("postgres_server").fresh_database()
    assert upgrade(url, "0001") == "0001"
    # Plain SQL at 0001: the ORM models describe the newest schema (columns 0001 does not have yet).
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO images (path, critical, interval_s, auto_heal_enabled, marked_bad, consecutive_heal_failures, "
            "last_status, registered_at, updated_at) VALUES ('/img/a.rts.png', false, 300, false, false, 0, 'unknown', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')")
        image = {"id": conn.exec_driver_sql("SELECT id FROM images").scalar_one()}
        conn.exec_driver_sql(
            "INSERT INTO heals (image_path, action, outcome, image_id, duration_ms, created_at) VALUES "
            f"('/img/a.rts.png', 'restore_golden', 'healed', {image['id']}, 0, '2026-01-01 00:00:00')")
    assert upgrade(url, "0002") == "0002"
    long_name = "site_actions.boot_images.initrd:repair_from_mirror_then_verify"  # 62 characters
    with session_scope(url) as s:
        queries.record_heal(s, image_path="/img/a.rts.png", action=long_name, outcome="healed", image_id=image["id"])
    with session_scope(url, write=False) as s:
        assert [(h.action, h.image_id) for h in s.exec(select(Heal).order_by(Heal.id)).all()] == [
            ("restore_golden", image["id"]), (long_name, image["id"])]
    with get_read_engine(url).connect() as conn:
        [action] = [c for c in sa.inspect(conn).get_columns("heals") if c["name"] == "action"]
        assert action["type"].length == 255 and action["nullable"] is False
    dispose_engines()


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    from storage.migrate import HEAD_REVISION

    assert HEAD_REVISION == head_revision()


SCHEMA_CHECK = """
import sys
from storage.migrate import upgrade
print(upgrade(sys.argv[1]), "alembic" in sys.modules)
"""


def test_upgrade_at_head_does_not_import_alembic_and_runs_when_behind(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    url = f"sqlite:///{tmp_path / 'selfheal.db'}"

    def run(url: str) -> str:
        out = subprocess.run([sys.executable, "-c", SCHEMA_CHECK, url], env=subprocess_env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run(url) == "0008 True"  # a new database: Alembic creates the schema
    assert run(url) == "0008 False"  # current: one query, no Alembic
    behind = f"sqlite:///{tmp_path / 'old.db'}"  # as after installing a newer selfheal: Alembic migrates
    assert upgrade(behind, "0004") == "0004"
    assert run(behind) == "0008 True"
    with get_read_engine(behind).connect() as conn:
        assert "promotion_watches" in sa.inspect(conn).get_table_names()
    assert run(behind) == "0008 False"


def test_schema_is_current_on_both_backends(db_url: str) -> None:
    from storage.migrate import schema_is_current

    assert schema_is_current(db_url) is True
    with get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0004'")
    assert schema_is_current(db_url) is False
    with get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("DELETE FROM alembic_version")
    assert schema_is_current(db_url) is False
    with get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    assert schema_is_current(db_url) is False
