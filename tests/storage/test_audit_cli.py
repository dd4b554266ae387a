"""`selfheal audit verify` and `selfheal audit init-key` in a real subprocess: exit codes and the lines."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from storage.audit import GENESIS_HASH, append_event, event_hash, key_id
from storage.engine import dispose_engines, session_scope
from storage.migrate import upgrade
from tests.conftest import selfheal_cmd, subprocess_env


def _run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env=subprocess_env(SELFHEAL_HOME=str(home), **env))


def _seed(home: Path, n: int, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{home / 'selfheal.db'}"
    upgrade(url)
    monkeypatch.setenv("SELFHEAL_HOME", str(home))
    for i in range(n):
        with session_scope(url) as session:
            append_event(session, "check", f"/img/{i}", {"i": i}, "worker")
    dispose_engines()
    return url


def test_truncation_and_further_findings_are_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    _seed(home, 20, monkeypatch)
    with sqlite3.connect(home / "selfheal.db") as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 4")
        conn.execute("DELETE FROM audit_events WHERE seq > 10")
        last = conn.execute("SELECT id, hash FROM audit_events WHERE seq = 10").fetchone()
        conn.execute("UPDATE audit_head SET seq = 10, last_event_id = ?, last_hash = ?", last)
    verify = _run(home, "audit", "verify")
    assert (verify.returncode, verify.stderr) == (2, "")
    assert verify.stdout == ("audit chain broken: seq gap 4 (1 event deleted) before event 5 (seq 5) (and 1 more finding)\n"
                             "  truncated: database ends at seq 10, checkpoint says 20\n")
    as_json = json.loads(_run(home, "audit", "verify", "--json").stdout)
    assert {k: as_json[k] for k in ("ok", "problem", "first_bad_id", "first_bad_seq", "events", "checkpoint_seq")} == {
        "ok": False, "problem": "deleted", "first_bad_id": 5, "first_bad_seq": 4, "events": 9, "checkpoint_seq": 20}
    assert as_json["findings"] == ["seq gap 4 (1 event deleted) before event 5 (seq 5)",
                                   "truncated: database ends at seq 10, checkpoint says 20"]


def test_missing_key_exits_3_and_is_not_recreated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    _seed(home, 5, monkeypatch)
    key = home / "audit" / "key"
    key.unlink()
    verify = _run(home, "audit", "verify")
    assert (verify.returncode, verify.stderr) == (3, "")
    assert verify.stdout == f"audit chain cannot be verified: key missing: {key} does not exist: cannot authenticate 5 events\n"
    init = _run(home, "audit", "init-key")
    assert (init.returncode, init.stdout) == (3, "")
    assert init.stderr == (f"selfheal: audit key missing: {key} does not exist but {home / 'audit' / 'checkpoints'} holds "
                           "checkpoints written with a key; restore the key (a new one would not authenticate the "
                           "existing events)\n")
    assert not key.exists()


def test_key_location_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    elsewhere = tmp_path / "secrets" / "audit.key"
    monkeypatch.setenv("SELFHEAL_AUDIT_KEY_FILE", str(elsewhere))
    _seed(home, 3, monkeypatch)
    assert elsewhere.is_file() and not (home / "audit" / "key").exists()
    assert _run(home, "audit", "verify", SELFHEAL_AUDIT_KEY_FILE=str(elsewhere)).returncode == 0
    wrong = _run(home, "audit", "verify", SELFHEAL_AUDIT_KEY_FILE=str(tmp_path / "nope"))
    assert (wrong.returncode, wrong.stdout) == (
        3, f"audit chain cannot be verified: key missing: {tmp_path / 'nope'} does not exist: cannot authenticate 3 events\n")


def test_init_key_anchors_a_legacy_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'selfheal.db'}"
    upgrade(url)
    dispose_engines()
    prev = GENESIS_HASH
    with sqlite3.connect(home / "selfheal.db") as conn:  # events written by a version without keys
        for seq in range(1, 4):
            created = "2026-03-01 12:00:00.000000"
            digest = event_hash(seq, _utc("2026-03-01T12:00:00"), "check", "/old", "worker", "{}", prev)
            conn.execute("INSERT INTO audit_events (seq, created_at, kind, subject, actor, payload, prev_hash, hash) "
                         "VALUES (?, ?, 'check', '/old', 'worker', '{}', ?, ?)", (seq, created, prev, digest))
            prev = digest
        conn.execute("UPDATE audit_head SET seq = 3, last_event_id = 3, last_hash = ?", (prev,))
    before = _run(home, "audit", "verify")
    assert (before.returncode, before.stdout) == (
        0, "audit chain intact: 3 events (0 authenticated, 3 legacy), not anchored: run `selfheal audit init-key` "
           "to authenticate new events\n")
    init = _run(home, "audit", "init-key")
    key = home / "audit" / "key"
    assert (init.returncode, init.stderr) == (0, "")
    assert init.stdout == (f"created audit key {key} (key id {key_id(bytes.fromhex(key.read_text()))}); back it up: "
                           "without it the audit chain cannot be verified\n"
                           "anchored the database's first 3 events at seq 3; new events are authenticated\n")
    again = _run(home, "audit", "init-key")
    assert again.stdout.endswith("this database was already anchored\n")
    after = _run(home, "audit", "verify")
    assert (after.returncode, after.stdout) == (0, "audit chain intact: 3 events (0 authenticated, 3 legacy), checkpoint at seq 3\n")


def _utc(text: str):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC)
