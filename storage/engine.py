"""The one place that creates database engines and sessions.

Public API
  get_engine(url=None, *, busy_timeout_ms=None) -> Engine
      Cached per (url, busy timeout). url defaults to settings.database_url (SELFHEAL_DATABASE_URL,
      else sqlite:///$SELFHEAL_HOME/selfheal.db). SQLite: the parent directory is created and every
      new connection gets journal_mode=WAL, busy_timeout, foreign_keys=ON, synchronous=NORMAL.
  session_scope(url=None, *, write=True) -> context manager yielding a Session
      Commits on success, rolls back on error, always closes. write=True (the default) starts the
      SQLite transaction with BEGIN IMMEDIATE, i.e. it takes the write lock up front and waits up to
      busy_timeout for it; that is what makes read-then-write sequences (audit append, slot claims,
      request claims) safe. Use write=False for pure reads (dashboard pages): a deferred transaction
      that never blocks writers in WAL mode. Keep write sessions short.
  get_read_engine(url=None, *, busy_timeout_ms=None) -> Engine
      The same engine (same pool) whose SQLite transactions begin DEFERRED (PostgreSQL: REPEATABLE
      READ snapshots): for pandas.read_sql and other read-only Core use. Plain get_engine()
      connections begin IMMEDIATE on SQLite, like write sessions.
  is_write_session(session) -> bool
  dispose_engines() -> None   (tests, and after fork)
  busy_timeout_ms_from_settings(settings=None) -> int
  DEFAULT_BUSY_TIMEOUT_MS

Errors: "database is locked" beyond the busy timeout (PostgreSQL: its lock timeout), "database or disk is full"
(PostgreSQL: disk full), a read-only database (PostgreSQL: read-only transaction), a disk I/O error and a database
file that cannot be opened surface as healing.errors.DatabaseError with one line (exit code 3), never a raw
traceback (operational_error() is the one mapping).

Configuration: ``database.busy_timeout_ms`` in the YAML file or SELFHEAL_DB_BUSY_TIMEOUT_MS
(default 5000, at least 100).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from healing.config import Settings, load_settings, mask_url
from healing.errors import ConfigError, DatabaseError, DependencyError

DEFAULT_BUSY_TIMEOUT_MS = 5000
# Execution option read by the "begin" listener: which kind of SQLite transaction to open.
BEGIN_OPTION = "selfheal_sqlite_begin"

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()


def busy_timeout_ms_from_settings(settings: Settings | None = None) -> int:
    """The configured SQLite busy timeout (ms): SELFHEAL_DB_BUSY_TIMEOUT_MS, database.busy_timeout_ms, 5000."""
    raw = os.environ.get("SELFHEAL_DB_BUSY_TIMEOUT_MS")
    key = "SELFHEAL_DB_BUSY_TIMEOUT_MS"
    if not raw:
        section = (settings or load_settings()).section("database")
        raw = section.get("busy_timeout_ms", DEFAULT_BUSY_TIMEOUT_MS)
        key = "database.busy_timeout_ms"
    try:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"config: {key} must be an integer number of milliseconds, got {raw!r}") from None
    if value < 100:
        raise ConfigError(f"config: {key} must be ≥ 100 ms, got {value}")
    return value


def get_engine(url: str | None = None, *, busy_timeout_ms: int | None = None) -> Engine:
    """The engine for ``url`` (default: the configured database), created once per process."""
    settings: Settings | None = None
    if url is None:
        settings = load_settings()
        url = settings.database_url
    if busy_timeout_ms is None:
        busy_timeout_ms = busy_timeout_ms_from_settings(settings)
    key = (url, busy_timeout_ms)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create_engine(url, busy_timeout_ms)
            _engines[key] = engine
        return engine


def get_read_engine(url: str | None = None, *, busy_timeout_ms: int | None = None) -> Engine:
    """get_engine(url) viewed through a read-only lens: SQLite transactions begin DEFERRED, PostgreSQL
    ones run REPEATABLE READ, so every query of one read session sees the same snapshot (verify_chain
    reads the chain head and then the events; they must agree)."""
    engine = get_engine(url, busy_timeout_ms=busy_timeout_ms)
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ", **{BEGIN_OPTION: "DEFERRED"})
    return engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})


def dispose_engines() -> None:
    """Close every cached engine's pool and forget them (tests; a forked child must not share sockets)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _forget_engines_after_fork() -> None:
    # The parent's pooled connections must not be used (or closed) by a forked child.
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_forget_engines_after_fork)


def _sqlite_path(url: sa.URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _postgresql_driver(url: sa.URL) -> sa.URL:
    """A bare ``postgresql://`` URL means SQLAlchemy's default driver, psycopg2; ``selfheal[postgres]``
    installs psycopg 3. Use psycopg 3 when it is there and psycopg2 is not."""
    from importlib.util import find_spec

    if url.drivername == "postgresql" and find_spec("psycopg2") is None and find_spec("psycopg") is not None:
        return url.set(drivername="postgresql+psycopg")
    return url


def _create_engine(url_text: str, busy_timeout_ms: int) -> Engine:
    try:
        url = sa.make_url(url_text)
    except sa.exc.ArgumentError:
        raise ConfigError(f"config: database_url is not a valid database URL: {mask_url(url_text)}") from None
    shown = mask_url(url_text)
    if url.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql":
            url = _postgresql_driver(url)
            # The busy timeout means the same on both backends: a lock held longer is an error, not a hang.
            connect_args["options"] = f"-c lock_timeout={int(busy_timeout_ms)}"
        try:
            engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        except sa.exc.NoSuchModuleError:
            raise ConfigError(f"config: database_url names an unknown database driver: {shown}") from None
        except ModuleNotFoundError as exc:
            raise DependencyError(
                f"the database driver for {url.drivername} is not installed ({exc.name}); "
                "for PostgreSQL: pip install 'psycopg[binary]'"
            ) from None
        _install_error_translation(engine, shown, busy_timeout_ms)
        return engine

    path = _sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create the database directory {path.parent}: {exc.strerror or exc}") from None
    engine = sa.create_engine(
        url,
        # sqlite3's own busy handler (seconds) and the PRAGMA below agree; both are set on purpose.
        connect_args={"timeout": busy_timeout_ms / 1000.0, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that BEGIN is ours to choose.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            # Switching a new file to WAL needs a lock SQLite's busy handler does not wait for: when two
            # processes open a fresh database at once, one gets "database is locked" at once. Retry it
            # within the busy timeout; once the file is in WAL mode the statement only reads.
            _retry_locked(lambda: cursor.execute("PRAGMA journal_mode = WAL"), busy_timeout_ms)
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    _install_error_translation(engine, shown, busy_timeout_ms, path)
    return engine


def _retry_locked(statement: Any, busy_timeout_ms: int) -> None:
    """Run ``statement()``, retrying "database is locked" with short sleeps for up to the busy timeout."""
    import sqlite3
    import time

    deadline = time.monotonic() + busy_timeout_ms / 1000.0
    delay = 0.005
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# PostgreSQL SQLSTATEs of the operational failures below (psycopg's ``sqlstate``, psycopg2's ``pgcode``).
_PG_DISK_FULL = {"53100"}  # disk_full
_PG_READ_ONLY = {"25006"}  # read_only_sql_transaction (a hot standby, default_transaction_read_only)
_PG_LOCKED = {"55P03"}  # lock_not_available (lock_timeout)


def _nearly_full(path: Path) -> bool:
    """True when the file system holding ``path`` has (almost) no space left."""
    try:
        st = os.statvfs(path.parent if not path.is_dir() else path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (256 << 10)


def operational_error(exc: BaseException, shown_url: str, busy_timeout_ms: int,
                      db_path: Path | None = None) -> DatabaseError | None:
    """The one-line DatabaseError (exit 3) for an expected operational failure of the database — locked
    beyond the busy timeout, disk full, read-only, cannot be opened — or None for anything else (a bug
    keeps its traceback). Used by the engine's error hook, so every caller gets the same line."""
    text = " ".join(str(exc).split())
    lowered = text.lower()
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if (code in _PG_LOCKED or "database is locked" in lowered or "database table is locked" in lowered
            or "canceling statement due to lock timeout" in lowered):
        return DatabaseError(
            f"database is locked: another process held it for more than {busy_timeout_ms} ms ({shown_url}); "
            "raise database.busy_timeout_ms or find the stuck writer")
    # SQLite says "disk I/O error" when its WAL or shared memory cannot grow on a full file system.
    full_io = "disk i/o error" in lowered and db_path is not None and _nearly_full(db_path)
    if code in _PG_DISK_FULL or full_io or "database or disk is full" in lowered or "no space left on device" in lowered:
        return DatabaseError(f"database or disk is full: cannot write to {shown_url}; free space on its file system")
    if code in _PG_READ_ONLY or "readonly database" in lowered or "read-only transaction" in lowered:
        return DatabaseError(f"database is read-only: cannot write to {shown_url} (file permissions, a read-only "
                             "file system or a read-only server)")
    if "disk i/o error" in lowered:
        return DatabaseError(f"disk I/O error on database {shown_url}")
    if "unable to open database file" in lowered or "file is not a database" in lowered:
        return DatabaseError(f"cannot open database {shown_url}: {text}")
    return None


def _install_error_translation(engine: Engine, shown_url: str, busy_timeout_ms: int, db_path: Path | None = None) -> None:
    @event.listens_for(engine, "handle_error")
    def _translate(ctx: sa.engine.ExceptionContext) -> None:
        error = operational_error(ctx.original_exception, shown_url, busy_timeout_ms, db_path)
        if error is not None:
            raise error from None
        if ctx.is_disconnect or ctx.connection is None:
            text = " ".join(str(ctx.original_exception).split())
            raise DatabaseError(f"cannot connect to database {shown_url}: {text}") from None


def is_write_session(session: Session) -> bool:
    """False for sessions from session_scope(write=False) / get_read_engine(), True otherwise."""
    return session.connection().get_execution_options().get(BEGIN_OPTION, "IMMEDIATE") == "IMMEDIATE"


@contextmanager
def session_scope(url: str | None = None, *, write: bool = True) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error (see the module docstring)."""
    bind = get_engine(url) if write else get_read_engine(url)
    # expire_on_commit=False: plain values read inside the scope stay usable after it closes.
    session = Session(bind=bind, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
