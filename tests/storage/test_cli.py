"""`selfheal audit verify` and `selfheal db upgrade` in a real subprocess: exit codes and messages."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from storage.audit import append_event
from storage.engine import dispose_engines, session_scope
from storage.migrate import HEAD_REVISION, upgrade
from tests.conftest import selfheal_cmd, subprocess_env


def _run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env=subprocess_env(SELFHEAL_HOME=str(home), **env))


def _seed(home: Path, n: int) -> None:
    """Migrate and append n events in this process (only the commands under test run as subprocesses),
    with the audit key and checkpoints under ``home`` like the subprocesses'."""
    url = f"sqlite:///{home / 'selfheal.db'}"
    upgrade(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFHEAL_HOME", str(home))
        for i in range(n):
            with session_scope(url) as session:
                append_event(session, "check", f"/img/{i}", {"i": i}, "worker")
    dispose_engines()


def test_db_upgrade_then_verify_intact(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = _run(home, "db", "upgrade")
    assert (up.returncode, up.stderr) == (0, "")
    assert up.stdout == f"database at revision {HEAD_REVISION} (sqlite:///{home / 'selfheal.db'})\n"
    assert _run(home, "db", "upgrade").returncode == 0  # idempotent
    _seed(home, 4)
    verify = _run(home, "audit", "verify")
    assert (verify.returncode, verify.stdout, verify.stderr) == (
        0, "audit chain intact: 4 events (4 authenticated, 0 legacy), checkpoint at seq 4\n", "")
    as_json = _run(home, "audit", "verify", "--json")  # incremental: resumes after seq 4, reads nothing new
    assert json.loads(as_json.stdout) == {"ok": True, "events": 4, "first_bad_id": None, "problem": None, "reason": None,
                                          "first_bad_seq": None, "authenticated": 4, "legacy": 0, "checkpoint_seq": 4,
                                          "findings": [], "mode": "incremental", "verified_from": 4, "rows_read": 0,
                                          "archived": 0, "segments": 0}


def test_verify_reports_an_edited_event_with_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed(home, 5)
    with sqlite3.connect(home / "selfheal.db") as conn:
        conn.execute("""UPDATE audit_events SET payload = '{"i":1000}' WHERE id = 3""")
    verify = _run(home, "audit", "verify")
    assert verify.returncode == 2
    assert verify.stdout == "audit chain broken: event 3 (seq 3): authentication failed (edited, or rehashed with another key)\n"


def test_verify_reports_a_deleted_event_with_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed(home, 5)
    with sqlite3.connect(home / "selfheal.db") as conn:
        conn.execute("DELETE FROM audit_events WHERE id = 2")
    verify = _run(home, "audit", "verify")
    assert verify.returncode == 2
    assert verify.stdout == "audit chain broken: seq gap 2 (1 event deleted) before event 3 (seq 3)\n"


def test_verify_exit_3_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    missing = _run(tmp_path / "nowhere", "audit", "verify")
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == (f"selfheal: cannot open database: {tmp_path / 'nowhere' / 'selfheal.db'} does not exist "
                              "(run `selfheal db upgrade` first)\n")
    assert not (tmp_path / "nowhere" / "selfheal.db").exists()  # verify never creates a database

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "selfheal.db").write_bytes(b"not sqlite at all" * 200)
    broken = _run(junk, "audit", "verify")
    assert broken.returncode == 3
    assert broken.stderr.startswith("selfheal: cannot open database sqlite:///")
    assert "file is not a database" in broken.stderr and broken.stderr.count("\n") == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    sqlite3.connect(empty / "selfheal.db").close()
    unmigrated = _run(empty, "audit", "verify")
    assert unmigrated.returncode == 3
    assert unmigrated.stderr == (f"selfheal: database sqlite:///{empty / 'selfheal.db'} has no audit table "
                                 "(run `selfheal db upgrade` first)\n")


def test_database_url_override_and_usage_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'x.db'}"
    up = _run(tmp_path / "home", "db", "upgrade", SELFHEAL_DATABASE_URL=url)
    assert (up.returncode, up.stdout) == (0, f"database at revision {HEAD_REVISION} ({url})\n")
    assert (tmp_path / "elsewhere" / "x.db").is_file()
    usage = _run(tmp_path / "home", "audit")
    assert usage.returncode == 64
