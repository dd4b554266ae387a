"""The keyed hash chain: canonical hashing, the key, secret scrubbing, checkpoints, concurrent appenders.

Every attack in issue 10 item 6 lives in test_audit_attacks.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.audit import (
    GENESIS_HASH,
    append_event,
    audit_paths,
    canonical_json,
    event_hash,
    event_mac,
    key_id,
    verify_chain,
)
from storage.engine import get_engine, session_scope
from storage.models import AuditEvent, AuditHead
from tests.storage._workers import append_events, run_in_processes

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
EVENTS = AuditEvent.__table__


def _append(url: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        with session_scope(url) as session:
            out.append(append_event(session, "check", f"/img/{i}.rts.png", {"i": i}, "worker", now=T0))
    return out


def _verify(url: str):
    with session_scope(url, write=False) as session:
        return verify_chain(session)


def _sql(url: str, statement: str) -> None:
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(statement)


def _key() -> bytes:
    return bytes.fromhex(audit_paths().key_file.read_text().strip())


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": {"z": [1, 2], "y": "é"}}) == '{"a":{"y":"é","z":[1,2]},"b":1}'
    assert canonical_json({"t": T0}) == '{"t":"2026-03-01T12:00:00.123456Z"}'


def test_first_event_mac_is_reproducible_by_hand(db_url: str) -> None:
    with session_scope(db_url) as session:
        first = append_event(session, "image.registered", "/img/a.rts.png", {"z": 1, "a": "x"}, "operator", now=T0)
    material = ('["selfheal-audit/2",1,"2026-03-01T12:00:00.123456Z","image.registered","/img/a.rts.png","operator",'
                '"{\\"a\\":\\"x\\",\\"z\\":1}","' + GENESIS_HASH + '"]')
    assert first["hash"] == hmac.new(_key(), material.encode(), hashlib.sha256).hexdigest()
    assert first["hash"] == event_mac(_key(), 1, T0, "image.registered", "/img/a.rts.png", "operator", '{"a":"x","z":1}',
                                      GENESIS_HASH)
    # The plain sha256 of the same content (what anyone can compute) is not what is stored.
    assert first["hash"] != event_hash(1, T0, "image.registered", "/img/a.rts.png", "operator", '{"a":"x","z":1}', GENESIS_HASH)
    assert (first["id"], first["seq"]) == (1, 1)


def test_key_is_created_private_and_never_stored_or_logged(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    paths = audit_paths()
    assert not paths.key_file.exists()
    _append(db_url, 3)
    key_text = paths.key_file.read_text()
    assert len(key_text) == 65 and key_text.endswith("\n") and int(key_text, 16) >= 0
    assert stat.S_IMODE(paths.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.checkpoint_file.stat().st_mode) == 0o600
    with get_engine(db_url).connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM audit_events").all() + conn.exec_driver_sql("SELECT * FROM audit_head").all()
    assert key_text.strip() not in repr(rows)
    assert key_text.strip() not in caplog.text and key_text.strip() not in paths.checkpoint_file.read_text()
    assert [r.getMessage() for r in caplog.records] == [
        f"created audit key {paths.key_file} (key id {key_id(_key())}); back it up: without it the audit chain "
        "cannot be verified"]


def test_checkpoint_file_pins_every_append(db_url: str) -> None:
    events = _append(db_url, 3)
    lines = audit_paths().checkpoint_file.read_text().splitlines()
    parts = [line.split(" ") for line in lines]
    assert [(p[0], p[2], p[3], p[4]) for p in parts] == [
        ("v1", "anchor", "0", GENESIS_HASH), *[("v1", "pin", str(e["seq"]), e["hash"]) for e in events]]
    assert {p[5] for p in parts} == {key_id(_key())}  # the key id, never the key
    assert len({p[1] for p in parts}) == 1  # one database
    body, mac = lines[1].rsplit(" ", 1)
    assert mac == hmac.new(_key(), b"selfheal-audit-checkpoint\0" + body.encode(), hashlib.sha256).hexdigest()


def test_secrets_are_scrubbed_before_storing_and_hashing(db_url: str) -> None:
    with session_scope(db_url) as session:
        append_event(session, "config", "vllm", {"api_key": "sk-live-123", "nested": {"Authorization": "Bearer x", "port": 8000},
                                                 "password": "", "tokens_per_s": 5}, "operator", now=T0)
    with get_engine(db_url).connect() as conn:
        payload = conn.exec_driver_sql("SELECT payload FROM audit_events").scalar_one()
    # Every key containing a secret word is masked (tokens_per_s too: the rule errs on the safe side); empty stays empty.
    assert payload == '{"api_key":"***","nested":{"Authorization":"***","port":8000},"password":"","tokens_per_s":"***"}'
    assert "sk-live" not in payload
    assert _verify(db_url).ok


def test_intact_chain(db_url: str) -> None:
    events = _append(db_url, 5)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    report = _verify(db_url)
    assert (report.ok, report.events, report.authenticated, report.legacy, report.checkpoint_seq) == (True, 5, 5, 0, 5)
    assert (report.first_bad_id, report.problem, report.findings, report.exit_code) == (None, None, (), 0)
    assert report.summary() == "audit chain intact: 5 events (5 authenticated, 0 legacy), checkpoint at seq 5"


def test_empty_chain_is_intact(db_url: str) -> None:
    report = _verify(db_url)
    assert report.summary() == "audit chain intact: 0 events (0 authenticated, 0 legacy)"
    assert report.exit_code == 0
    assert not audit_paths().key_file.exists()  # verifying never creates a key


def test_several_databases_share_one_checkpoint_file(db_url: str, tmp_path: Path) -> None:
    from storage.migrate import upgrade

    other = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other)
    _append(db_url, 3)
    _append(other, 5)
    _append(db_url, 1)
    assert _verify(db_url).summary() == "audit chain intact: 4 events (4 authenticated, 0 legacy), checkpoint at seq 4"
    assert _verify(other).summary() == "audit chain intact: 5 events (5 authenticated, 0 legacy), checkpoint at seq 5"


def test_append_refuses_a_read_session(db_url: str) -> None:
    with session_scope(db_url, write=False) as session:
        with pytest.raises(RuntimeError, match="append_event needs a write session"):
            append_event(session, "check", "/x", {}, "t")


def test_rolled_back_append_leaves_no_trace(db_url: str) -> None:
    _append(db_url, 2)
    with pytest.raises(ZeroDivisionError):
        with session_scope(db_url) as session:
            append_event(session, "check", "/x", {}, "t")
            1 / 0  # noqa: B018
    assert len(audit_paths().checkpoint_file.read_text().splitlines()) == 3  # no pin for the rolled-back event
    third = _append(db_url, 1)[0]
    assert third["seq"] == 3
    assert _verify(db_url).summary() == "audit chain intact: 3 events (3 authenticated, 0 legacy), checkpoint at seq 3"


def test_several_appends_in_one_transaction_pin_the_last(db_url: str) -> None:
    _append(db_url, 1)
    with session_scope(db_url) as session:
        for i in range(3):
            append_event(session, "check", "/x", {"i": i}, "t")
    seqs = [line.split(" ")[3] for line in audit_paths().checkpoint_file.read_text().splitlines()]
    assert seqs == ["0", "1", "4"]
    assert _verify(db_url).ok


def test_a_lost_pin_is_reported_then_repaired_by_the_next_append(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that dies between its commit and its pin leaves the file behind; the next append re-pins."""
    import storage.audit as audit
    from healing.safeio import WriteError

    _append(db_url, 2)
    real = audit._append_checkpoint

    def fail(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        raise WriteError("cannot write audit checkpoints: no space left on device")

    monkeypatch.setattr(audit, "_append_checkpoint", fail)
    _append(db_url, 1)  # committed; the pin is lost (logged, not raised: the event is in the database)
    monkeypatch.setattr(audit, "_append_checkpoint", real)
    report = _verify(db_url)
    assert (report.exit_code, report.problem, report.first_bad_seq) == (2, "checkpoint", 3)
    assert report.reason.startswith("checkpoint file is behind the database: last checkpoint seq 2, database ends at seq 3")
    _append(db_url, 1)
    seqs = [line.split(" ")[3] for line in audit_paths().checkpoint_file.read_text().splitlines()]
    assert seqs == ["0", "1", "2", "3", "4"]  # seq 3 re-pinned under the lock before seq 4 was written
    assert _verify(db_url).summary() == "audit chain intact: 4 events (4 authenticated, 0 legacy), checkpoint at seq 4"


def test_compaction_keeps_the_file_small_and_the_evidence(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.audit as audit

    monkeypatch.setattr(audit, "_COMPACT_AT_BYTES", 2000)
    _append(db_url, 40)
    path = audit_paths().checkpoint_file
    assert path.stat().st_size <= 2000 + 200
    assert _verify(db_url).summary() == "audit chain intact: 40 events (40 authenticated, 0 legacy), checkpoint at seq 40"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # Cut the database back to seq 30 and append past the old end: the backward jump survives compaction.
    _sql(db_url, "DELETE FROM audit_events WHERE seq > 30")
    with get_engine(db_url).begin() as conn:
        last = conn.exec_driver_sql("SELECT id, hash FROM audit_events WHERE seq = 30").one()
        conn.exec_driver_sql(f"UPDATE audit_head SET seq = 30, last_event_id = {last.id}, last_hash = '{last.hash}'")
    _append(db_url, 40)
    report = _verify(db_url)
    assert report.exit_code == 2 and report.problem == "truncated"
    assert report.reason.startswith("checkpoints go backwards at line ")
    assert report.reason.endswith(": seq 40 then 31: the database was cut back to seq 30 and appended to again")
    assert any(f.startswith("event ") and "(seq 40) differs from checkpoint line" in f for f in report.findings)


def test_long_lived_session_does_not_reuse_a_stale_head(db_url: str) -> None:
    from sqlmodel import Session

    from storage.engine import get_engine as engine_for

    session = Session(engine_for(db_url), expire_on_commit=False)  # one session, several transactions
    try:
        append_event(session, "check", "/a", {}, "t")
        held = session.get(AuditHead, 1)  # a strong reference keeps the head in the identity map
        session.commit()
        _append(db_url, 1)  # another writer moves the head meanwhile
        third = append_event(session, "check", "/a", {}, "t")
        session.commit()
    finally:
        session.close()
    assert third["seq"] == 3 and held is not None and held.seq == 3
    assert _verify(db_url).summary() == "audit chain intact: 3 events (3 authenticated, 0 legacy), checkpoint at seq 3"


def test_concurrent_threads_never_share_a_prev_hash(db_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(name: str) -> None:
        try:
            barrier.wait()
            for i in range(25):
                with session_scope(db_url) as session:
                    append_event(session, "test.append", name, {"i": i}, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    _assert_chain_of(db_url, 100)


def test_two_processes_append_into_one_chain(db_url: str) -> None:
    assert run_in_processes([(append_events, (db_url, "p1", 40)), (append_events, (db_url, "p2", 40))]) == [40, 40]
    _assert_chain_of(db_url, 80)
    with get_engine(db_url).connect() as conn:
        by_writer = dict(conn.exec_driver_sql("SELECT subject, count(*) FROM audit_events GROUP BY subject").all())
    assert by_writer == {"p1": 40, "p2": 40}


def test_verify_while_processes_append_is_always_intact(db_url: str) -> None:
    """Checkpoint and head are read under one lock: a verification racing appenders never sees a torn state."""
    _append(db_url, 1)  # the key exists before the children start (they inherit SELFHEAL_HOME)
    reports = []
    done = threading.Event()

    def verifier() -> None:
        while not done.is_set():
            reports.append(_verify(db_url))

    thread = threading.Thread(target=verifier)
    thread.start()
    try:
        assert run_in_processes([(append_events, (db_url, "p1", 60)), (append_events, (db_url, "p2", 60))]) == [60, 60]
    finally:
        done.set()
        thread.join(60)
    assert len(reports) >= 3
    assert [r.summary() for r in reports if not r.ok] == []
    _assert_chain_of(db_url, 121)
    seqs = [int(line.split(" ")[3]) for line in audit_paths().checkpoint_file.read_text().splitlines()]
    assert seqs == sorted(set(seqs)) and seqs[-1] == 121  # pins strictly increase: appends never interleave


def _legacy_events(db_url: str, count: int) -> None:
    """A database written before the key existed: ``count`` plain sha256 events."""
    prev = GENESIS_HASH
    with get_engine(db_url).begin() as conn:
        for seq in range(1, count + 1):
            digest = event_hash(seq, T0, "check", "/old", "worker", "{}", prev)
            conn.execute(EVENTS.insert().values(seq=seq, created_at=T0, kind="check", subject="/old", actor="worker",
                                                payload="{}", prev_hash=prev, hash=digest))
            prev = digest
        conn.exec_driver_sql(f"UPDATE audit_head SET seq = {count}, last_event_id = {count}, last_hash = '{prev}'")


def test_legacy_events_are_anchored_by_the_first_append_after_an_upgrade(db_url: str) -> None:
    _legacy_events(db_url, 5)
    assert _verify(db_url).summary() == ("audit chain intact: 5 events (0 authenticated, 5 legacy), "
                                         "not anchored: run `selfheal audit init-key` to authenticate new events")
    _append(db_url, 1)  # no key and no checkpoint: the upgrade's first append creates the key and anchors seq 5
    assert audit_paths().key_file.exists()
    assert _verify(db_url).summary() == "audit chain intact: 6 events (1 authenticated, 5 legacy), checkpoint at seq 6"

    # The anchor pins the legacy head: rewriting the legacy prefix (plain sha256, relinked) is caught.
    _sql(db_url, "UPDATE audit_events SET subject = '/forged' WHERE seq = 2")
    _rehash_plain(db_url, from_seq=2, to_seq=5)
    report = _verify(db_url)
    assert report.exit_code == 2
    assert report.findings[:2] == ("event 5 (seq 5) differs from checkpoint line 1: it was rewritten after being recorded",
                                   "event 6 (seq 6): prev_hash does not match the hash of event 5 (seq 5): an event was "
                                   "rewritten, or events were deleted and renumbered")


def test_init_key_anchors_legacy_events_on_demand(db_url: str) -> None:
    from storage.audit import init_key

    _legacy_events(db_url, 5)
    with session_scope(db_url) as session:
        result = init_key(session)
    assert result == {"created": True, "key_file": str(audit_paths().key_file), "key_id": key_id(_key()), "anchored_seq": 5}
    _append(db_url, 2)
    assert _verify(db_url).summary() == "audit chain intact: 7 events (2 authenticated, 5 legacy), checkpoint at seq 7"
    with session_scope(db_url) as session:
        assert init_key(session)["anchored_seq"] is None  # idempotent


def test_key_path_and_checkpoint_path_are_configurable(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "selfheal.yaml"
    config.write_text("audit:\n  key_file: keys/audit.key\n  checkpoint_file: /nonexistent-never-used\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    monkeypatch.setenv("SELFHEAL_AUDIT_CHECKPOINT_FILE", str(tmp_path / "cp" / "checkpoints"))  # env wins over YAML
    paths = audit_paths()
    assert paths.key_file == Path(os.environ["SELFHEAL_HOME"]) / "keys" / "audit.key"  # relative to the home
    assert paths.checkpoint_file == tmp_path / "cp" / "checkpoints"
    _append(db_url, 2)
    assert paths.key_file.is_file() and paths.checkpoint_file.is_file()
    assert _verify(db_url).ok


def test_key_is_never_created_through_a_symlink(db_url: str, tmp_path: Path) -> None:
    from healing.safeio import WriteError

    paths = audit_paths()
    paths.key_file.parent.mkdir(mode=0o700, parents=True)
    target = tmp_path / "elsewhere"
    paths.key_file.symlink_to(target)
    with pytest.raises(WriteError, match="audit key path is a symbolic link; refusing to write there"):
        _append(db_url, 1)
    assert not target.exists()
    assert _verify(db_url).summary() == "audit chain intact: 0 events (0 authenticated, 0 legacy)"


def _rehash_plain(url: str, *, from_seq: int, to_seq: int) -> None:
    """What an attacker without the key can do: recompute plain sha256 hashes and relink."""
    import sqlalchemy as sa

    table = EVENTS
    with get_engine(url).begin() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.seq)).all()
        prev = GENESIS_HASH
        for row in rows:
            if from_seq <= row.seq <= to_seq:
                digest = event_hash(row.seq, row.created_at, row.kind, row.subject, row.actor, row.payload, prev)
                conn.execute(table.update().where(table.c.id == row.id).values(prev_hash=prev, hash=digest))
                prev = digest
            else:
                prev = row.hash


def _assert_chain_of(url: str, n: int) -> None:
    with get_engine(url).connect() as conn:
        rows = conn.exec_driver_sql("SELECT seq, prev_hash, hash FROM audit_events ORDER BY seq").all()
    assert [r.seq for r in rows] == list(range(1, n + 1))
    assert len({r.prev_hash for r in rows}) == n  # no two events share a predecessor
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, n))
    report = _verify(url)
    assert (report.ok, report.events, report.authenticated) == (True, n, n)
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_checkpoint_state_cache_rereads_a_file_rewritten_in_place(tmp_path: Path) -> None:
    """Appenders parse only what was appended since they last looked; a file replaced under the same
    inode (compaction elsewhere reusing the number, or an in-place rewrite) is parsed from the start."""
    from storage.audit import _read_state

    path = tmp_path / "checkpoints"
    path.write_bytes(b"v1 aaaaaaaaaaaaaaaa pin 7 h k t m\n")
    assert _read_state(path).last_seq == {"aaaaaaaaaaaaaaaa": 7}
    with open(path, "ab") as fh:
        fh.write(b"v1 aaaaaaaaaaaaaaaa pin 8 h k t m\n")
    assert _read_state(path).last_seq == {"aaaaaaaaaaaaaaaa": 8}
    inode = path.stat().st_ino
    with open(path, "r+b") as fh:  # same inode, different and longer content
        fh.write(b"v1 bbbbbbbbbbbbbbbb anchor 0 h k t m\nv1 bbbbbbbbbbbbbbbb pin 1 h k t m\nv1 bbbbbbbbbbbbbbbb pin 2 h k t m\n")
    assert path.stat().st_ino == inode
    assert _read_state(path).last_seq == {"bbbbbbbbbbbbbbbb": 2}


def test_a_forked_child_does_not_keep_the_checkpoint_lock(db_url: str) -> None:
    """A child forked while a transaction holds the lock closes its copy at once: the parent's commit
    releases the lock although the child lives on."""
    import signal
    import time

    _append(db_url, 1)
    with session_scope(db_url) as session:
        append_event(session, "check", "/a", {}, "t")
        pid = os.fork()
        if pid == 0:  # the child just waits to be killed
            time.sleep(60)
            os._exit(0)
    try:
        started = time.monotonic()
        assert _verify(db_url).summary() == "audit chain intact: 2 events (2 authenticated, 0 legacy), checkpoint at seq 2"
        _append(db_url, 1)
        assert time.monotonic() - started < 2.0  # neither waited for the 5 s lock timeout
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_process_without_the_key_does_not_append_to_a_keyed_chain(db_url: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A dashboard started with another SELFHEAL_HOME must not write unauthenticated events into the chain."""
    from storage.audit import AuditKeyError

    _append(db_url, 2)
    with monkeypatch.context() as other:
        other.setenv("SELFHEAL_HOME", str(tmp_path / "other-home"))
        with pytest.raises(AuditKeyError, match="the chain's events are keyed; point this process at the key"):
            _append(db_url, 1)
    assert not (tmp_path / "other-home" / "audit" / "key").exists()
    assert _verify(db_url).summary() == "audit chain intact: 2 events (2 authenticated, 0 legacy), checkpoint at seq 2"
