"""Every attack on the audit chain from issue 10 item 6, on SQLite and on PostgreSQL.

Each attack starts from an intact chain of 20 keyed events, tampers with the database, the checkpoint
file or the key the way an attacker with that access would, and asserts what `selfheal audit verify`
then reports: exit code, problem code and the exact first line. test_documented_limits pins down
what an attacker holding both the database and the checkpoint file (or the key) can hide, as the
README says.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from storage.audit import (
    GENESIS_HASH,
    AuditKeyError,
    append_event,
    audit_paths,
    event_hash,
    event_mac,
    key_id,
    verify_chain,
)
from storage.engine import get_engine, session_scope
from storage.models import AuditEvent

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
EVENTS = AuditEvent.__table__
N = 20


def _append(url: str, n: int, subject: str = "/img/a.rts.png") -> None:
    for i in range(n):
        with session_scope(url) as session:
            append_event(session, "check", subject, {"i": i}, "worker", now=T0 + timedelta(seconds=i))


def _verify(url: str):
    with session_scope(url, write=False) as session:
        return verify_chain(session)


def _sql(url: str, statement: str) -> None:
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(statement)


def _rows(conn: sa.Connection) -> list:
    return conn.execute(sa.select(EVENTS).order_by(EVENTS.c.seq)).all()


def _set_head(conn: sa.Connection) -> None:
    """Point audit_head at the table's last event (what an attacker does to hide a cut tail)."""
    rows = _rows(conn)
    last = rows[-1] if rows else None
    conn.execute(sa.text("UPDATE audit_head SET seq = :seq, last_event_id = :id, last_hash = :hash"),
                 {"seq": last.seq if last else 0, "id": last.id if last else None, "hash": last.hash if last else GENESIS_HASH})


def _relink(url: str, from_seq: int, digest: Callable[..., str]) -> None:
    """Recompute every hash from ``from_seq`` on with ``digest`` and relink the chain, head included."""
    with get_engine(url).begin() as conn:
        prev = GENESIS_HASH
        for row in _rows(conn):
            if row.seq >= from_seq:
                new = digest(row.seq, row.created_at, row.kind, row.subject, row.actor, row.payload, prev)
                conn.execute(EVENTS.update().where(EVENTS.c.id == row.id).values(prev_hash=prev, hash=new))
                prev = new
            else:
                prev = row.hash
        _set_head(conn)


def _wrong_key_mac(*content: object) -> str:
    return event_mac(b"\x01" * 32, *content)  # type: ignore[arg-type]


def _insert_forged(url: str, digest: Callable[..., str], *, move_head: bool = True) -> None:
    with get_engine(url).begin() as conn:
        last = _rows(conn)[-1]
        content = (last.seq + 1, T0, "heal", "/img/a.rts.png", "operator", '{"restored":true}', last.hash)
        conn.execute(EVENTS.insert().values(seq=content[0], created_at=T0, kind="heal", subject="/img/a.rts.png",
                                            actor="operator", payload='{"restored":true}', prev_hash=last.hash,
                                            hash=digest(*content)))
        if move_head:
            _set_head(conn)


def _write_key(raw: bytes) -> None:
    path = audit_paths().key_file
    path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(raw.hex() + "\n")


def _checkpoint_lines() -> list[str]:
    return audit_paths().checkpoint_file.read_text().splitlines(keepends=True)


# ---------------------------------------------------------------------------------------- the attacks

def delete_last_10_and_rewind_head(url: str) -> None:
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM audit_events WHERE seq > {N - 10}")
        _set_head(conn)


def delete_last_10_keep_head(url: str) -> None:
    _sql(url, f"DELETE FROM audit_events WHERE seq > {N - 10}")


def wipe_both_tables(url: str) -> None:
    _sql(url, "DELETE FROM audit_events")
    _sql(url, "DELETE FROM audit_head")


def wipe_and_reseed_an_empty_head(url: str) -> None:
    _sql(url, "DELETE FROM audit_events")
    _sql(url, f"UPDATE audit_head SET seq = 0, last_event_id = NULL, last_hash = '{GENESIS_HASH}'")


def edit_payload(url: str) -> None:
    _sql(url, """UPDATE audit_events SET payload = '{"i":99}' WHERE seq = 5""")


def edit_and_rehash_with_plain_sha256(url: str) -> None:
    _sql(url, "UPDATE audit_events SET actor = 'attacker' WHERE seq = 5")
    _relink(url, 5, event_hash)


def edit_and_rehash_with_a_wrong_key(url: str) -> None:
    _sql(url, "UPDATE audit_events SET actor = 'attacker' WHERE seq = 5")
    _relink(url, 5, _wrong_key_mac)


def delete_a_middle_event(url: str) -> None:
    _sql(url, "DELETE FROM audit_events WHERE seq = 8")


def delete_a_middle_range(url: str) -> None:
    _sql(url, "DELETE FROM audit_events WHERE seq BETWEEN 5 AND 9")


def delete_a_middle_event_and_renumber(url: str) -> None:
    _sql(url, "DELETE FROM audit_events WHERE seq = 8")
    _sql(url, "UPDATE audit_events SET seq = seq - 1 WHERE seq > 8")
    _relink(url, 8, event_hash)


def reorder_two_by_id(url: str) -> None:
    _sql(url, "UPDATE audit_events SET id = 1000 WHERE seq = 2")
    _sql(url, "UPDATE audit_events SET id = 2 WHERE seq = 3")
    _sql(url, "UPDATE audit_events SET id = 3 WHERE seq = 2")


def reorder_two_by_seq(url: str) -> None:
    _sql(url, "UPDATE audit_events SET seq = 1000 WHERE seq = 2")
    _sql(url, "UPDATE audit_events SET seq = 2 WHERE seq = 3")
    _sql(url, "UPDATE audit_events SET seq = 3 WHERE seq = 1000")


def reorder_two_and_relink(url: str) -> None:
    reorder_two_by_seq(url)
    _relink(url, 2, event_hash)


def insert_forged_event_plain_sha256(url: str) -> None:
    _insert_forged(url, event_hash)


def insert_forged_event_wrong_key(url: str) -> None:
    _insert_forged(url, _wrong_key_mac)


def insert_forged_event_head_untouched(url: str) -> None:
    _insert_forged(url, event_hash, move_head=False)


def truncate_checkpoint_file(url: str) -> None:
    lines = _checkpoint_lines()
    audit_paths().checkpoint_file.write_text("".join(lines[:10]))


def cut_checkpoint_file_mid_line(url: str) -> None:
    lines = _checkpoint_lines()
    audit_paths().checkpoint_file.write_text("".join(lines[:10]) + lines[10][:40])


def empty_checkpoint_file(url: str) -> None:
    audit_paths().checkpoint_file.write_text("")


def delete_checkpoint_file(url: str) -> None:
    audit_paths().checkpoint_file.unlink()


def delete_checkpoint_file_then_append(url: str) -> None:
    audit_paths().checkpoint_file.unlink()
    _append(url, 1)


def edit_a_checkpoint_line(url: str) -> None:
    lines = _checkpoint_lines()
    parts = lines[-1].split(" ")
    parts[3] = str(N - 10)  # claim the chain ended earlier
    lines[-1] = " ".join(parts)
    audit_paths().checkpoint_file.write_text("".join(lines))


def replace_key_file(url: str) -> None:
    _write_key(secrets.token_bytes(32))


def replace_key_file_and_resign_database(url: str) -> None:
    new = secrets.token_bytes(32)
    _write_key(new)
    _relink(url, 1, lambda *content: event_mac(new, *content))


def delete_key_file(url: str) -> None:
    audit_paths().key_file.unlink()


def key_file_made_unreadable(url: str) -> None:
    path = audit_paths().key_file
    path.unlink()
    path.mkdir()  # a directory where the key belongs (tests run as root: chmod 000 would not stop reads)


def _path(kind: str) -> str:
    paths = audit_paths()
    return str(paths.key_file if kind == "key" else paths.checkpoint_file)


BEHIND = ("(the file was truncated or restored from an older copy; or a process died between committing and pinning, "
          "which the next append repairs)")

# (attack, exit code, problem, first line of the report — {key}/{checkpoints}/{kid}/{old_kid} filled in)
ATTACKS: list[tuple[Callable[[str], None], int, str, str]] = [
    (delete_last_10_and_rewind_head, 2, "truncated", "truncated: database ends at seq 10, checkpoint says 20"),
    (delete_last_10_keep_head, 2, "deleted",
     "the last 10 event(s) were deleted: the head records seq 20 ending at event 20, the table ends at seq 10"),
    (wipe_both_tables, 2, "wiped", "wiped: 0 events in the database, checkpoint says 20"),
    (wipe_and_reseed_an_empty_head, 2, "wiped", "wiped: 0 events in the database, checkpoint says 20"),
    (edit_payload, 2, "edited", "event 5 (seq 5): authentication failed (edited, or rehashed with another key)"),
    (edit_and_rehash_with_plain_sha256, 2, "edited",
     "event 5 (seq 5): authentication failed: its hash is a plain sha256 where the key's HMAC belongs "
     "(rewritten by someone without the key)"),
    (edit_and_rehash_with_a_wrong_key, 2, "edited",
     "event 5 (seq 5): authentication failed (edited, or rehashed with another key)"),
    (delete_a_middle_event, 2, "deleted", "seq gap 8 (1 event deleted) before event 9 (seq 9)"),
    (delete_a_middle_range, 2, "deleted", "seq gap 5..9 (5 events deleted) before event 10 (seq 10)"),
    (delete_a_middle_event_and_renumber, 2, "edited",
     "event 9 (seq 8): authentication failed: its hash is a plain sha256 where the key's HMAC belongs "
     "(rewritten by someone without the key)"),
    (reorder_two_by_id, 2, "reordered",
     "event 2 (seq 3) comes after event 3 in the chain but has a smaller id: events were reordered"),
    (reorder_two_by_seq, 2, "edited", "event 3 (seq 2): authentication failed (edited, or rehashed with another key)"),
    (reorder_two_and_relink, 2, "edited",
     "event 3 (seq 2): authentication failed: its hash is a plain sha256 where the key's HMAC belongs "
     "(rewritten by someone without the key)"),
    (insert_forged_event_plain_sha256, 2, "edited",
     "event 21 (seq 21): authentication failed: its hash is a plain sha256 where the key's HMAC belongs "
     "(rewritten by someone without the key)"),
    (insert_forged_event_wrong_key, 2, "edited",
     "event 21 (seq 21): authentication failed (edited, or rehashed with another key)"),
    (insert_forged_event_head_untouched, 2, "edited",
     "event 21 (seq 21): authentication failed: its hash is a plain sha256 where the key's HMAC belongs "
     "(rewritten by someone without the key)"),
    (truncate_checkpoint_file, 2, "checkpoint",
     f"checkpoint file is behind the database: last checkpoint seq 9, database ends at seq 20 {BEHIND}"),
    (cut_checkpoint_file_mid_line, 2, "checkpoint", "checkpoint file line 11 is not a checkpoint (edited, or cut mid-line)"),
    (empty_checkpoint_file, 2, "checkpoint",
     "checkpoint file has no checkpoint for this database ({checkpoints}) although 20 authenticated events exist: "
     "deleted or replaced"),
    (delete_checkpoint_file, 2, "checkpoint",
     "checkpoint file is missing ({checkpoints}) although 20 authenticated events exist: deleted or replaced"),
    (delete_checkpoint_file_then_append, 2, "checkpoint",
     "the checkpoints of this database were lost: re-anchored at seq 20 on {reanchor_ts} (line 1); "
     "events deleted before that cannot be ruled out"),
    (edit_a_checkpoint_line, 2, "checkpoint", "checkpoint file line 21 fails authentication (edited)"),
    (replace_key_file, 2, "key",
     "key file replaced: checkpoints were written with key id {old_kid}, {key} holds key id {kid}"),
    (replace_key_file_and_resign_database, 2, "key",
     "key file replaced: checkpoints were written with key id {old_kid}, {key} holds key id {kid}"),
    (delete_key_file, 3, "key_missing", "key missing: {key} does not exist: cannot authenticate 20 events"),
    (key_file_made_unreadable, 3, "key_unreadable",
     "audit key {key}: is a directory, not an audit key file: cannot authenticate 20 events"),
]


@pytest.mark.parametrize(("attack", "exit_code", "problem", "first_line"), ATTACKS, ids=[a[0].__name__ for a in ATTACKS])
def test_attack_is_named(db_url: str, attack: Callable[[str], None], exit_code: int, problem: str, first_line: str) -> None:
    _append(db_url, N)
    before = _verify(db_url)
    assert (before.ok, before.authenticated, before.checkpoint_seq) == (True, N, N)
    old_kid = key_id(bytes.fromhex(audit_paths().key_file.read_text()))
    attack(db_url)
    report = _verify(db_url)
    kid = key_id(bytes.fromhex(audit_paths().key_file.read_text())) if audit_paths().key_file.is_file() else None
    lines = _checkpoint_lines() if audit_paths().checkpoint_file.exists() else []
    reanchor_ts = lines[0].split(" ")[6] if lines else ""
    expected = first_line.format(key=_path("key"), checkpoints=_path("checkpoints"), kid=kid, old_kid=old_kid,
                                 reanchor_ts=reanchor_ts)
    assert (report.ok, report.exit_code, report.problem, report.reason) == (False, exit_code, problem, expected)
    assert report.findings[0] == expected
    verdict = "cannot be verified" if exit_code == 3 else "broken"
    assert report.summary().startswith(f"audit chain {verdict}: {expected}")


def test_findings_name_every_problem_not_just_the_first(db_url: str) -> None:
    _append(db_url, N)
    edit_payload(db_url)
    delete_a_middle_event(db_url)
    delete_last_10_and_rewind_head(db_url)
    report = _verify(db_url)
    assert report.findings == (
        "event 5 (seq 5): authentication failed (edited, or rehashed with another key)",
        "seq gap 8 (1 event deleted) before event 9 (seq 9)",
        "truncated: database ends at seq 10, checkpoint says 20",
    )
    assert report.summary() == ("audit chain broken: event 5 (seq 5): authentication failed (edited, or rehashed with "
                                "another key) (and 2 more findings)")


def test_missing_key_is_never_recreated_while_checkpoints_exist(db_url: str) -> None:
    _append(db_url, 3)
    paths = audit_paths()
    paths.key_file.unlink()
    with pytest.raises(AuditKeyError, match="audit key missing: .* holds checkpoints written with a key; restore the key"):
        _append(db_url, 1)
    assert not paths.key_file.exists()
    wipe_both_tables(db_url)  # even an empty chain gets no new key while checkpoints exist
    with pytest.raises(AuditKeyError):
        _append(db_url, 1)
    assert not paths.key_file.exists()


def test_limit_database_and_checkpoint_file(db_url: str) -> None:
    """README: with the database and the checkpoint file, the tail can be cut in both; edits still fail."""
    _append(db_url, N)
    delete_last_10_and_rewind_head(db_url)
    audit_paths().checkpoint_file.write_text("".join(_checkpoint_lines()[: N - 10 + 1]))  # the anchor and pins 1..10
    assert _verify(db_url).summary() == "audit chain intact: 10 events (10 authenticated, 0 legacy), checkpoint at seq 10"
    edit_payload(db_url)
    assert _verify(db_url).problem == "edited"


def test_limit_database_and_key(db_url: str) -> None:
    """README: with the database and the key (not the checkpoint file), pinned events still cannot be
    rewritten (the chain links them to the last pin), but events forged after the last pin are blessed
    by the next honest append."""
    _append(db_url, N)
    key = bytes.fromhex(audit_paths().key_file.read_text())
    _sql(db_url, "UPDATE audit_events SET actor = 'attacker' WHERE seq = 5")
    _relink(db_url, 5, lambda *content: event_mac(key, *content))
    assert _verify(db_url).reason == "event 5 (seq 5) differs from checkpoint line 6: it was rewritten after being recorded"
    _sql(db_url, "UPDATE audit_events SET actor = 'worker' WHERE seq = 5")  # undo: same content, same key, same hashes
    _relink(db_url, 5, lambda *content: event_mac(key, *content))
    assert _verify(db_url).ok
    _insert_forged(db_url, lambda *content: event_mac(key, *content))
    assert _verify(db_url).reason.startswith("checkpoint file is behind the database: last checkpoint seq 20, database ends at seq 21")
    _append(db_url, 1)
    assert _verify(db_url).summary() == "audit chain intact: 22 events (22 authenticated, 0 legacy), checkpoint at seq 22"


def test_limit_database_key_and_checkpoint_file(db_url: str) -> None:
    """README: with all three, anything can be rewritten and re-signed; only an external copy shows it."""
    import hmac

    _append(db_url, N)
    key = bytes.fromhex(audit_paths().key_file.read_text())
    _sql(db_url, "UPDATE audit_events SET actor = 'attacker' WHERE seq = 5")
    _relink(db_url, 5, lambda *content: event_mac(key, *content))
    with get_engine(db_url).connect() as conn:
        hashes = dict(conn.exec_driver_sql("SELECT seq, hash FROM audit_events").all())
    resigned = []
    for line in _checkpoint_lines():
        body = line.rsplit(" ", 1)[0].split(" ")
        body[4] = hashes.get(int(body[3]), body[4])
        text = " ".join(body)
        resigned.append(f"{text} {hmac.new(key, b'selfheal-audit-checkpoint' + bytes(1) + text.encode(), 'sha256').hexdigest()}\n")
    audit_paths().checkpoint_file.write_text("".join(resigned))
    assert _verify(db_url).ok


def test_gaps_are_tampering_even_without_the_key(db_url: str) -> None:
    _append(db_url, N)
    delete_a_middle_event(db_url)
    delete_key_file(db_url)
    report = _verify(db_url)
    assert (report.exit_code, report.problem) == (2, "deleted")
    assert report.findings == ("seq gap 8 (1 event deleted) before event 9 (seq 9)",
                               f"key missing: {_path('key')} does not exist: cannot authenticate 19 events")
