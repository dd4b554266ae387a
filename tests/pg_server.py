"""A throwaway PostgreSQL server for the tests that must run against the real thing.

``SELFHEAL_TEST_POSTGRES_URL`` (a SQLAlchemy URL whose role may create databases) points the tests at
an existing server. Otherwise, where PostgreSQL's programs are installed (Debian's ``postgresql``
package; ``.ci/run`` installs it), one cluster is created in a temporary directory with ``initdb``
and started on a free loopback port for the whole test session; as root it runs as the ``postgres``
user, since PostgreSQL refuses to run as root. Each test gets a fresh database on that server.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from healing.tuning.canary import free_port


class StartFailed(RuntimeError):
    """initdb or pg_ctl failed: the message carries the last line of what they printed."""


@dataclass
class PostgresServer:
    admin_url: str  # SQLAlchemy URL of the maintenance database
    created: list[str] = field(default_factory=list)

    def _admin(self, *statements: str) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    def fresh_database(self, prefix: str = "selfheal_test") -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{len(self.created) + 1}"
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return sa.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_created(self) -> None:
        """Drop the databases this session created (on a server the tests did not start themselves)."""
        self._admin(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.created))
        self.created.clear()


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def why_unavailable() -> str | None:
    """None when a server can be had; else the reason, for the skip message."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'selfheal[postgres]')"
    if os.environ.get("SELFHEAL_TEST_POSTGRES_URL"):
        return None
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql) and SELFHEAL_TEST_POSTGRES_URL is unset"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser, so initdb cannot run as an unprivileged user"
    return None


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_server() -> Iterator[PostgresServer]:
    """Yield a running server; stop it and remove its files afterwards."""
    url = os.environ.get("SELFHEAL_TEST_POSTGRES_URL")
    if url:
        server = PostgresServer(url)
        try:
            yield server
        finally:
            server.drop_created()
        return
    bindir = _bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="selfheal-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = free_port()
    log = root / "server.log"
    try:
        _start(bindir, root, data, port, log)
        admin = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        _wait_until_accepting(admin)
        yield PostgresServer(admin)
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _start(bindir: Path, root: Path, data: Path, port: int, log: Path) -> None:
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                  "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w",
                                  "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip().splitlines() or ["(nothing)"]
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        program = "initdb" if any(str(part).endswith("initdb") for part in exc.cmd) else "pg_ctl start"
        raise StartFailed(f"{program} failed: {(tail or said)[-1]}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartFailed(f"cannot start PostgreSQL: {exc}") from None


def _wait_until_accepting(admin: str) -> None:
    engine = sa.create_engine(admin)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                return
            except sa.exc.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise StartFailed(f"the server did not accept connections within 30 s: {exc}") from None
                time.sleep(0.2)
    finally:
        engine.dispose()
