"""Audit archive segments (storage.archive) and incremental verification (storage.audit.verify_chain).

Real databases (SQLite file; PostgreSQL where the suite's server is available), real key, checkpoint file,
segment files and manifest under a temporary $SELFHEAL_HOME.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from storage.archive import KIND_ARCHIVED, MANIFEST_NAME, archive_events, read_manifest
from storage.audit import EXIT_CRITICAL, append_event, audit_paths, load_key, verify_chain
from storage.engine import dispose_engines, session_scope
from storage.migrate import upgrade
from tests.conftest import selfheal_cmd, subprocess_env


def _append(url: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with session_scope(url) as session:
            append_event(session, "check", f"/img/{i}", {"i": i}, "worker")


def _archive(url: str, upto: int) -> dict:
    with session_scope(url) as session:
        result = archive_events(session, upto_seq=upto)
    assert result is not None
    return result


def _verify(url: str, *, incremental: bool = False):
    with session_scope(url, write=False) as session:
        return verify_chain(session, incremental=incremental)


def _archive_dir(home: Path) -> Path:
    return home / "audit" / "archive"


def _live_seqs(url: str) -> list[int]:
    with session_scope(url, write=False) as session:
        return [r[0] for r in session.execute(sa.text("SELECT seq FROM audit_events ORDER BY seq"))]


def test_archive_moves_the_oldest_events_into_a_verified_segment(db_url: str, _isolated_home: Path) -> None:
    _append(db_url, 30)
    result = _archive(db_url, 20)
    assert (result["first_seq"], result["last_seq"], result["count"], result["event_seq"]) == (1, 20, 20, 31)
    segment = _archive_dir(_isolated_home) / result["segment"]
    lines = gzip.decompress(segment.read_bytes()).decode().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 21))
    assert [json.loads(line)["subject"] for line in lines[:2]] == ["/img/0", "/img/1"]
    segments, malformed = read_manifest(audit_paths(), load_key(audit_paths().key_file))
    assert malformed == [] and len(segments) == 1
    seg = segments[0]
    assert (seg.first_seq, seg.last_seq, seg.count, seg.sha256, seg.authentic) == (1, 20, 20, result["sha256"], True)
    assert seg.last_hash == json.loads(lines[-1])["hash"]
    assert _live_seqs(db_url) == list(range(21, 32))
    with session_scope(db_url, write=False) as session:
        event = session.execute(sa.text("SELECT kind, subject, payload, prev_hash FROM audit_events WHERE seq = 31")).one()
        first_live = session.execute(sa.text("SELECT prev_hash FROM audit_events WHERE seq = 21")).scalar_one()
    assert (event.kind, event.subject) == (KIND_ARCHIVED, "audit:1..20")
    payload = json.loads(event.payload)
    assert (payload["first_seq"], payload["last_seq"], payload["count"], payload["sha256"], payload["segment"]) == (
        1, 20, 20, result["sha256"], result["segment"])
    assert first_live == seg.last_hash  # the live chain continues from the archived event's MAC
    for incremental in (False, True):
        report = _verify(db_url, incremental=incremental)
        assert (report.ok, report.events, report.authenticated, report.archived, report.segments) == (True, 31, 31, 20, 1), \
            report.findings
    # The chain keeps growing across the boundary, and a second segment follows the first.
    _append(db_url, 5, start=30)
    second = _archive(db_url, 25)
    assert (second["first_seq"], second["last_seq"], second["event_seq"]) == (21, 25, 37)
    report = _verify(db_url)
    assert (report.ok, report.events, report.archived, report.segments) == (True, 37, 25, 2)
    assert report.summary() == "audit chain intact: 37 events (37 authenticated, 0 legacy), 25 archived in 2 segments, " \
                               "checkpoint at seq 37"
    with session_scope(db_url) as session:
        assert archive_events(session, upto_seq=25) is None  # nothing older left


def test_incremental_verification_reads_only_new_events(db_url: str) -> None:
    _append(db_url, 40)
    _archive(db_url, 10)  # live: 11..41
    full = _verify(db_url, incremental=True)  # no verified point yet: reads every live event
    assert (full.ok, full.rows_read, full.verified_from, full.events) == (True, 31, None, 41)
    _append(db_url, 7, start=40)
    again = _verify(db_url, incremental=True)
    assert (again.ok, again.rows_read, again.verified_from, again.events, again.authenticated) == (True, 7, 41, 48, 48)
    assert again.summary().endswith("verified incrementally from seq 41 (7 events read)")
    nothing = _verify(db_url, incremental=True)
    assert (nothing.ok, nothing.rows_read, nothing.events) == (True, 0, 48)
    assert _verify(db_url).rows_read == 38  # --full reads every live event again


def test_incremental_still_finds_deletions_in_the_verified_range_and_new_tampering(sqlite_url: str) -> None:
    _append(sqlite_url, 20)
    assert _verify(sqlite_url, incremental=True).ok
    _append(sqlite_url, 3, start=20)
    with session_scope(sqlite_url) as session:
        session.execute(sa.text("UPDATE audit_events SET payload = :p WHERE seq = 22"), {"p": '{"i":99}'})
    report = _verify(sqlite_url, incremental=True)
    assert (report.ok, report.problem, report.first_bad_seq, report.rows_read) == (False, "edited", 22, 3)
    with session_scope(sqlite_url) as session:
        session.execute(sa.text("UPDATE audit_events SET payload = :p WHERE seq = 22"), {"p": '{"i":21}'})
        session.execute(sa.text("DELETE FROM audit_events WHERE seq = 5"))
    report = _verify(sqlite_url, incremental=True)
    assert (report.ok, report.problem) == (False, "deleted")
    assert report.reason == "1 event(s) deleted from seq 1..20, which an earlier verification found intact; " \
                            "run `selfheal audit verify --full`"


def _two_segments(url: str) -> list:
    _append(url, 30)
    _archive(url, 10)
    _archive(url, 20)
    paths = audit_paths()
    return read_manifest(paths, load_key(paths.key_file))[0]


def _rewrite_without_line(path: Path, drop: int) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(b"".join(line for i, line in enumerate(lines) if i != drop), mtime=0))


@pytest.mark.parametrize("attack", ["byte_flip", "deleted_line", "swapped", "truncated", "missing"])
@pytest.mark.parametrize("incremental", [False, True])
def test_a_tampered_segment_fails_verification_naming_it(sqlite_url: str, _isolated_home: Path, attack: str,
                                                         incremental: bool) -> None:
    first, second = _two_segments(sqlite_url)
    assert _verify(sqlite_url, incremental=incremental).ok
    folder = _archive_dir(_isolated_home)
    target = folder / first.name
    if attack == "byte_flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif attack == "deleted_line":
        _rewrite_without_line(target, 3)
    elif attack == "swapped":
        a, b = target.read_bytes(), (folder / second.name).read_bytes()
        target.write_bytes(b)
        (folder / second.name).write_bytes(a)
    elif attack == "truncated":
        target.write_bytes(target.read_bytes()[:-20])
    else:
        target.unlink()
    report = _verify(sqlite_url, incremental=incremental)
    assert report.ok is False and report.problem == "archive" and report.exit_code == EXIT_CRITICAL
    assert report.reason.startswith(f"archive segment {first.name} (seq 1..10): ")
    if attack == "swapped":
        assert len(report.findings) == 2 and report.findings[1].startswith(f"archive segment {second.name} (seq 11..20): ")
    else:
        assert len(report.findings) == 1, report.findings
    if attack == "truncated":
        assert "truncated or extended" in report.reason
    if attack == "missing":
        assert report.reason.endswith(f"the file {target} is missing")


def test_a_segment_rewritten_with_a_new_manifest_line_is_refused(sqlite_url: str, _isolated_home: Path) -> None:
    """Someone without the key cannot make a matching manifest line; dropping the segment's line leaves a gap."""
    first, _second = _two_segments(sqlite_url)
    manifest = _archive_dir(_isolated_home) / MANIFEST_NAME
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(lines[1])  # the first segment's line removed
    report = _verify(sqlite_url)
    assert report.ok is False
    assert report.findings[0].startswith("archive segment ") and "does not continue the chain from seq 0" in report.findings[0]
    manifest.write_bytes(lines[0].replace(b" 10 ", b" 11 ", 1) + lines[1])  # an edited line
    report = _verify(sqlite_url)
    assert report.ok is False and report.findings[0].startswith(f"archive manifest line 1 ({first.name}) ")
    assert report.findings[0].endswith("fails authentication (edited)")


def test_full_verification_reauthenticates_the_events_inside_a_segment(sqlite_url: str, _isolated_home: Path) -> None:
    """A segment whose bytes match its manifest line but whose events do not verify (as a broken archiver
    holding the key would write it) passes the incremental check (sha256 only) and fails --full."""
    import hashlib

    from storage.archive import _manifest_line

    first, _second = _two_segments(sqlite_url)
    report = _verify(sqlite_url)
    assert (report.ok, report.archived, report.authenticated, report.events) == (True, 20, 32, 32)
    folder = _archive_dir(_isolated_home)
    lines = gzip.decompress((folder / first.name).read_bytes()).splitlines(keepends=True)
    event = json.loads(lines[4])
    event["payload"] = '{"i":404}'
    lines[4] = json.dumps(event, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    data = gzip.compress(b"".join(lines), mtime=0)
    (folder / first.name).write_bytes(data)
    key = load_key(audit_paths().key_file)
    manifest = folder / MANIFEST_NAME
    rest = manifest.read_bytes().splitlines(keepends=True)[1:]
    manifest.write_bytes(_manifest_line(key, first.db, 1, 10, first.prev_hash, first.last_hash, 10,
                                        hashlib.sha256(data).hexdigest(), len(data), first.name) + b"".join(rest))
    assert _verify(sqlite_url, incremental=True).ok
    report = _verify(sqlite_url)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "archive", 5)
    assert report.reason == f"archive segment {first.name} (seq 1..10): event {event['id']} (seq 5) inside it fails verification"


def test_an_interrupted_archiving_is_finished_by_the_next_run(sqlite_url: str, _isolated_home: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest line is written but the transaction rolls back (the process dies before commit)."""
    import storage.archive as archive

    _append(sqlite_url, 12)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed before commit")

    with monkeypatch.context() as patch:
        patch.setattr(archive, "_delete_and_record", boom)
        with pytest.raises(RuntimeError), session_scope(sqlite_url) as session:
            archive_events(session, upto_seq=8)
    assert _live_seqs(sqlite_url) == list(range(1, 13))
    assert _verify(sqlite_url).ok  # archived and still live: the overlap is not tampering
    with session_scope(sqlite_url) as session:
        result = archive_events(session, upto_seq=10)
    assert (result["first_seq"], result["last_seq"], result["resumed"]) == (1, 8, True)
    assert _live_seqs(sqlite_url) == list(range(9, 14))
    report = _verify(sqlite_url)
    assert (report.ok, report.events, report.archived) == (True, 13, 8)


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env=subprocess_env(SELFHEAL_HOME=str(home)))


@pytest.mark.slow  # eight CLI processes (~1 s each, more on a busy machine)
def test_cli_archive_verify_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'selfheal.db'}"
    upgrade(url)
    monkeypatch.setenv("SELFHEAL_HOME", str(home))
    _append(url, 15)
    dispose_engines()
    archived = _run(home, "audit", "archive", "--upto-seq", "9")
    assert archived.returncode == 0, archived.stderr
    assert archived.stdout.startswith("archived events 1..9 (9) to ") and " sha256 " in archived.stdout
    assert _run(home, "audit", "archive", "--older-than-days", "30").stdout == "nothing to archive\n"
    verify = _run(home, "audit", "verify")
    assert (verify.returncode, verify.stdout) == (0, "audit chain intact: 16 events (16 authenticated, 0 legacy), "
                                                     "9 archived in 1 segment, checkpoint at seq 16\n")
    again = _run(home, "audit", "verify")
    assert again.stdout.endswith("verified incrementally from seq 16 (0 events read)\n")
    full = _run(home, "audit", "verify", "--full", "--json")
    data = json.loads(full.stdout)
    assert (full.returncode, data["ok"], data["mode"], data["rows_read"], data["archived"]) == (0, True, "full", 7, 9)
    out = tmp_path / "export"
    exported = _run(home, "audit", "export-archive", str(out))
    assert exported.stdout == f"exported 1 archive segment(s) and their manifest to {out}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, *(p.name for p in (home / "audit" / "archive").glob("*.gz"))])
    (home / "audit" / "archive" / next(p.name for p in out.glob("*.gz"))).write_bytes(b"not a segment")
    broken = _run(home, "audit", "verify")
    assert broken.returncode == 2 and broken.stdout.startswith("audit chain broken: archive segment ")
    assert len(broken.stdout.splitlines()) == 1
    bad = _run(home, "audit", "archive", "--upto-seq", "0")
    assert (bad.returncode, bad.stdout, bad.stderr.strip().count("\n")) == (3, "", 0)


@pytest.mark.parametrize("incremental", [False, True])
def test_without_the_key_an_archived_chain_cannot_be_verified_rather_than_tampered(sqlite_url: str, incremental: bool) -> None:
    _two_segments(sqlite_url)
    audit_paths().key_file.unlink()
    report = _verify(sqlite_url, incremental=incremental)
    assert (report.ok, report.problem, report.exit_code) == (False, "key_missing", 3)


def archive_rounds(url: str, rounds: int) -> list[int]:
    """Child process: archive everything live, ``rounds`` times, while others append (last seqs archived)."""
    import time

    done = []
    for _ in range(rounds):
        with session_scope(url) as session:
            result = archive_events(session)
        if result is not None:
            done.append(result["last_seq"])
        time.sleep(0.05)
    return done


@pytest.mark.slow  # three processes contending for the chain (~5 s)
def test_archiving_while_two_processes_append_keeps_one_verifiable_chain(db_url: str) -> None:
    from tests.storage._workers import append_events, run_in_processes

    _append(db_url, 5)
    first, second, archived = run_in_processes([(append_events, (db_url, "p1", 60)), (append_events, (db_url, "p2", 60)),
                                                (archive_rounds, (db_url, 6))])
    assert (first, second) == (60, 60) and len(archived) >= 1 and archived == sorted(archived)
    report = _verify(db_url)
    segments = len(archived)
    assert (report.ok, report.segments, report.events) == (True, segments, 5 + 120 + segments), report.findings
    assert report.archived == archived[-1]
    with session_scope(db_url, write=False) as session:
        live = session.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()
    lines = [json.loads(line) for p in _archive_dir(Path(os.environ["SELFHEAL_HOME"])).glob("*.gz")
             for line in gzip.decompress(p.read_bytes()).splitlines()]
    assert sorted(e["seq"] for e in lines) == list(range(1, archived[-1] + 1))  # each archived event in one segment
    assert sum(e["kind"] == "test.append" for e in lines) <= 120
    assert live + len(lines) == 5 + 120 + segments  # every event is live or archived, once
    assert _verify(db_url, incremental=True).ok
