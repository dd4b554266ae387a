"""The engine factory: pragmas on every connection, caching, locking behaviour, error lines."""

from __future__ import annotations

import importlib.util
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from healing.errors import ConfigError, DatabaseError, DependencyError
from healing.tuning.canary import free_port
from storage.engine import (
    busy_timeout_ms_from_settings,
    get_engine,
    get_read_engine,
    is_write_session,
    session_scope,
)
from tests.storage._workers import run_in_processes, write_checks_for


def _pragmas(conn: sa.Connection) -> tuple[str, int, int, int]:
    return (
        conn.exec_driver_sql("PRAGMA journal_mode").scalar_one(),
        conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one(),
        conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one(),
        conn.exec_driver_sql("PRAGMA synchronous").scalar_one(),
    )


def test_every_new_connection_gets_the_pragmas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'deeper' / 'x.db'}"
    engine = get_engine(url, busy_timeout_ms=7000)
    assert (tmp_path / "nested" / "deeper").is_dir()  # parent directory created
    # Three connections open at once are three distinct DB-API connections, each configured.
    # (Read connections: plain ones begin IMMEDIATE, so three at once in one thread would wait on each other.)
    conns = [get_read_engine(url, busy_timeout_ms=7000).connect() for _ in range(3)]
    try:
        assert len({id(c.connection.dbapi_connection) for c in conns}) == 3
        for conn in conns:
            assert _pragmas(conn) == ("wal", 1, 7000, 1)  # synchronous NORMAL == 1
    finally:
        for conn in conns:
            conn.close()
    # A connection created after the pool was emptied is configured too.
    engine.dispose()
    with engine.connect() as conn:
        assert _pragmas(conn) == ("wal", 1, 7000, 1)


def test_default_busy_timeout_is_5000_and_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert busy_timeout_ms_from_settings() == 5000
    monkeypatch.setenv("SELFHEAL_DB_BUSY_TIMEOUT_MS", "12000")
    assert busy_timeout_ms_from_settings() == 12000
    with get_engine(f"sqlite:///{tmp_path / 'b.db'}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 12000
    monkeypatch.setenv("SELFHEAL_DB_BUSY_TIMEOUT_MS", "soon")
    with pytest.raises(ConfigError, match="SELFHEAL_DB_BUSY_TIMEOUT_MS must be an integer number of milliseconds, got 'soon'"):
        busy_timeout_ms_from_settings()
    monkeypatch.delenv("SELFHEAL_DB_BUSY_TIMEOUT_MS")
    config = tmp_path / "c.yaml"
    config.write_text("database:\n  busy_timeout_ms: 50\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"database.busy_timeout_ms must be ≥ 100 ms, got 50"):
        busy_timeout_ms_from_settings()


def test_default_url_comes_from_selfheal_home_and_engines_are_cached(_isolated_home: Path) -> None:
    engine = get_engine()
    assert engine.url.database == str(_isolated_home / "selfheal.db")
    assert get_engine() is engine
    assert get_engine(f"sqlite:///{_isolated_home / 'selfheal.db'}") is engine
    assert get_engine(f"sqlite:///{_isolated_home / 'other.db'}") is not engine


def test_foreign_keys_are_enforced(db_url: str) -> None:
    from storage.models import Check

    # SQLite and PostgreSQL word it differently; both refuse the row.
    with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY constraint failed|violates foreign key constraint"):
        with session_scope(db_url) as session:
            session.add(Check(image_id=999, image_path="/nope", status="healthy"))


def test_write_sessions_begin_immediate_and_read_sessions_do_not(sqlite_url: str, db_path: Path) -> None:
    db_url = sqlite_url
    with session_scope(db_url) as session:
        assert is_write_session(session)
        # The write lock is already held: a second writer cannot get it even with a short timeout.
        other = sqlite3.connect(db_path, timeout=0.05, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
    with session_scope(db_url, write=False) as session:
        assert not is_write_session(session)
        other = sqlite3.connect(db_path, timeout=0.05, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a deferred reader does not block writers
        other.execute("ROLLBACK")
        other.close()


def test_lock_held_beyond_the_busy_timeout_is_one_clear_database_error(sqlite_url: str, db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    get_engine(url, busy_timeout_ms=200)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        engine = get_engine(url, busy_timeout_ms=200)
        started = time.monotonic()
        with pytest.raises(DatabaseError) as info:
            with engine.begin() as conn:
                conn.exec_driver_sql("SELECT 1")
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(info.value)
    assert message.startswith("database is locked: another process held it for more than 200 ms (sqlite:///")
    assert "\n" not in message
    assert info.value.exit_code == 3
    assert 0.15 <= waited < 3.0  # it waited for the busy timeout, then gave up


def test_unopenable_database_is_a_database_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not a sqlite database file" * 100)
    with pytest.raises(DatabaseError, match="^cannot open database sqlite:///.*junk.db: .*file is not a database"):
        with get_engine(f"sqlite:///{not_a_db}").connect() as conn:
            conn.exec_driver_sql("SELECT * FROM sqlite_master").all()


def test_reader_thread_and_writer_process_for_three_seconds_never_lock(db_url: str) -> None:
    from storage import queries

    with session_scope(db_url) as session:
        queries.upsert_image(session, "/img/w.rts.png", critical=True)
    errors: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                with session_scope(db_url, write=False) as session:
                    queries.list_images_with_latest_status(session)
                    queries.audit_page(session, limit=20)
                reads += 1
            except Exception as exc:  # any error fails the test below
                errors.append(f"{type(exc).__name__}: {exc}")
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        [written] = run_in_processes([(write_checks_for, (db_url, 3.0))])
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    assert written > 20 and reads > 20
    with session_scope(db_url, write=False) as session:
        assert queries.fleet_summary(session)["healthy"] == 1
        assert len(queries.check_history(session, 1, limit=100000)) == written


def test_bad_urls_and_missing_drivers_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="^config: database_url is not a valid database URL: not a url$"):
        get_engine("not a url", busy_timeout_ms=5000)
    # The password never appears in the message.
    with pytest.raises(ConfigError, match=r"^config: database_url names an unknown database driver: "
                                          r"postgresql\+nosuchdriver://u:\*\*\*@db/selfheal$"):
        get_engine("postgresql+nosuchdriver://u:hunter2@db/selfheal", busy_timeout_ms=5000)
    with pytest.raises(DependencyError, match=r"^the database driver for postgresql\+pg8000 is not installed \(pg8000\); "
                                              r"for PostgreSQL: pip install"):
        get_engine("postgresql+pg8000://u:hunter2@db/selfheal", busy_timeout_ms=5000)


def test_bare_postgresql_url_uses_psycopg_3_when_psycopg2_is_absent() -> None:
    pytest.importorskip("psycopg")
    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed: the bare URL keeps SQLAlchemy's default driver")
    engine = get_engine("postgresql://u:hunter2@127.0.0.1:1/selfheal", busy_timeout_ms=1500)
    assert engine.dialect.driver == "psycopg"
    assert engine.url.render_as_string(hide_password=True) == "postgresql+psycopg://u:***@127.0.0.1:1/selfheal"


def test_postgresql_lock_held_beyond_the_busy_timeout_is_one_clear_database_error(pg_url: str) -> None:
    holder = sa.create_engine(pg_url)
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("LOCK TABLE audit_head IN ACCESS EXCLUSIVE MODE")
            engine = get_engine(pg_url, busy_timeout_ms=300)
            started = time.monotonic()
            with pytest.raises(DatabaseError) as info:
                with engine.begin() as other:
                    other.exec_driver_sql("SELECT * FROM audit_head")
            waited = time.monotonic() - started
            conn.exec_driver_sql("ROLLBACK")
    finally:
        holder.dispose()
    message = str(info.value)
    assert message.startswith("database is locked: another process held it for more than 300 ms (postgresql+psycopg://")
    assert "\n" not in message and info.value.exit_code == 3
    assert 0.25 <= waited < 3.0


def test_postgresql_server_down_is_one_line_without_the_password(postgres_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://selfheal:hunter2@127.0.0.1:{port}/selfheal"
    with pytest.raises(DatabaseError) as info:
        with session_scope(url, write=False) as session:
            session.exec(sa.text("SELECT 1"))
    message = str(info.value)
    assert message.startswith(f"cannot connect to database postgresql+psycopg://selfheal:***@127.0.0.1:{port}/selfheal: ")
    assert "hunter2" not in message and "\n" not in message


def test_connect_time_pragma_retries_a_locked_database_within_the_busy_timeout() -> None:
    """Two processes opening a fresh file at once: the WAL switch may say "locked" without waiting."""
    from storage.engine import _retry_locked

    calls = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")

    _retry_locked(flaky, 1000)
    assert len(calls) == 3

    def always_locked() -> None:
        calls.append(time.monotonic())
        raise sqlite3.OperationalError("database is locked")

    calls.clear()
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        _retry_locked(always_locked, 200)
    assert 0.1 <= time.monotonic() - started < 1.0 and len(calls) >= 3

    def broken() -> None:
        calls.append(time.monotonic())
        raise sqlite3.OperationalError("disk I/O error")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _retry_locked(broken, 1000)
    assert len(calls) == 1  # other errors are not retried


def test_full_sqlite_database_is_one_line_database_error(sqlite_url: str, db_path: Path) -> None:
    engine = get_engine(sqlite_url)
    engine.dispose()

    @sa.event.listens_for(engine, "connect")
    def _tiny(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.execute("PRAGMA max_page_count = 64")  # SQLITE_FULL, as on a full disk

    with pytest.raises(DatabaseError) as info:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE filler (x BLOB)")
            for _ in range(200):
                conn.exec_driver_sql("INSERT INTO filler VALUES (zeroblob(4096))")
    assert str(info.value) == (f"database or disk is full: cannot write to sqlite:///{db_path}; "
                               "free space on its file system")
    assert info.value.exit_code == 3


def test_read_only_sqlite_database_is_one_line_database_error(sqlite_url: str, db_path: Path) -> None:
    from healing.config import mask_url

    url = f"sqlite:///file:{db_path}?mode=ro&uri=true"
    with pytest.raises(DatabaseError) as info:
        with get_engine(url).begin() as conn:
            conn.exec_driver_sql("INSERT INTO audit_head (id, seq, last_hash) VALUES (99, 0, '')")
    assert str(info.value) == (f"database is read-only: cannot write to {mask_url(url)} (file permissions, a read-only "
                               "file system or a read-only server)")


def test_postgresql_read_only_transaction_is_one_line_database_error(pg_url: str) -> None:
    with pytest.raises(DatabaseError) as info:
        with get_engine(pg_url).begin() as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql("DELETE FROM audit_head")
    assert str(info.value).startswith("database is read-only: cannot write to postgresql+psycopg://")


def test_postgresql_disk_full_and_lock_codes_map_to_one_line() -> None:
    from storage.engine import operational_error

    class PgError(Exception):
        def __init__(self, sqlstate: str, text: str) -> None:
            super().__init__(text)
            self.sqlstate = sqlstate

    full = operational_error(PgError("53100", 'could not extend file "base/1/2": No space left on device\nHINT: x'),
                             "postgresql://u:***@h/db", 5000)
    locked = operational_error(PgError("55P03", "could not obtain lock on relation"), "postgresql://h/db", 300)
    assert str(full) == "database or disk is full: cannot write to postgresql://u:***@h/db; free space on its file system"
    assert str(locked).startswith("database is locked: another process held it for more than 300 ms (postgresql://h/db)")
    assert operational_error(PgError("42P01", 'relation "x" does not exist'), "postgresql://h/db", 300) is None
