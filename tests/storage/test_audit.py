"""The hash chain: canonical hashing, secret scrubbing, tamper detection, concurrent appenders."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

import pytest

from storage.audit import GENESIS_HASH, append_event, canonical_json, event_hash, verify_chain
from storage.engine import get_engine, session_scope
from storage.models import AuditHead
from tests.storage._workers import append_events, run_in_processes

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


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


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": {"z": [1, 2], "y": "é"}}) == '{"a":{"y":"é","z":[1,2]},"b":1}'
    assert canonical_json({"t": T0}) == '{"t":"2026-03-01T12:00:00.123456Z"}'


def test_first_event_hash_is_reproducible_by_hand(db_url: str) -> None:
    with session_scope(db_url) as session:
        first = append_event(session, "image.registered", "/img/a.rts.png", {"z": 1, "a": "x"}, "operator", now=T0)
    material = '[1,"2026-03-01T12:00:00.123456Z","image.registered","/img/a.rts.png","operator","{\\"a\\":\\"x\\",\\"z\\":1}","' + GENESIS_HASH + '"]'
    assert first["hash"] == hashlib.sha256(material.encode()).hexdigest()
    assert first["hash"] == event_hash(1, T0, "image.registered", "/img/a.rts.png", "operator", '{"a":"x","z":1}', GENESIS_HASH)
    assert (first["id"], first["seq"]) == (1, 1)


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
    assert (report.ok, report.events, report.first_bad_id, report.problem) == (True, 5, None, None)
    assert report.summary() == "audit chain intact: 5 events"


def test_empty_chain_is_intact(db_url: str) -> None:
    assert _verify(db_url).summary() == "audit chain intact: 0 events"


def test_edited_payload_is_named(db_url: str) -> None:
    _append(db_url, 5)
    _sql(db_url, """UPDATE audit_events SET payload = '{"i":99}' WHERE id = 3""")
    report = _verify(db_url)
    assert (report.ok, report.first_bad_id, report.problem, report.events) == (False, 3, "edited", 2)
    assert report.summary() == "audit chain broken at event 3: event 3 (seq 3) was edited: its content no longer matches its hash"


def test_edited_and_rehashed_event_breaks_the_next_link(db_url: str) -> None:
    _append(db_url, 4)
    with get_engine(db_url).begin() as conn:
        row = conn.exec_driver_sql("SELECT seq, created_at, kind, subject, actor, prev_hash FROM audit_events WHERE id = 2").one()
        forged = event_hash(row.seq, T0, row.kind, row.subject, "attacker", '{"i":1}', row.prev_hash)
        conn.exec_driver_sql(f"UPDATE audit_events SET actor = 'attacker', hash = '{forged}' WHERE id = 2")
    report = _verify(db_url)
    assert (report.first_bad_id, report.problem) == (3, "relinked")
    assert "does not match the hash of event 2" in report.reason


def test_deleted_middle_event_is_named(db_url: str) -> None:
    _append(db_url, 6)
    _sql(db_url, "DELETE FROM audit_events WHERE id = 4")
    report = _verify(db_url)
    assert (report.ok, report.first_bad_id, report.problem) == (False, 5, "deleted")
    assert report.reason == "1 event(s) missing before event 5: sequence jumps from 3 to 5"


def test_deleted_last_events_are_detected_through_the_head(db_url: str) -> None:
    _append(db_url, 6)
    _sql(db_url, "DELETE FROM audit_events WHERE id >= 5")
    report = _verify(db_url)
    assert (report.ok, report.first_bad_id, report.problem, report.events) == (False, 6, "deleted", 4)
    assert report.reason == "the last 2 event(s) were deleted: the head records 6 events ending at event 6, the table holds 4"


def test_reordered_events_are_named(db_url: str) -> None:
    _append(db_url, 5)
    # Swap the chain positions of rows 2 and 3 by moving whole rows (content and hash travel together).
    _sql(db_url, "UPDATE audit_events SET id = 100 WHERE id = 2")
    _sql(db_url, "UPDATE audit_events SET id = 2 WHERE id = 3")
    _sql(db_url, "UPDATE audit_events SET id = 3 WHERE id = 100")
    report = _verify(db_url)
    assert (report.first_bad_id, report.problem) == (2, "reordered")


def test_renumbered_sequence_is_detected(db_url: str) -> None:
    _append(db_url, 5)
    _sql(db_url, "DELETE FROM audit_events WHERE id = 2")
    _sql(db_url, "UPDATE audit_events SET seq = seq - 1 WHERE seq > 2")  # hide the gap
    report = _verify(db_url)
    assert (report.first_bad_id, report.problem) == (3, "edited")  # seq is hashed: renumbering edits the event


def test_event_written_around_append_is_detected(db_url: str) -> None:
    events = _append(db_url, 2)
    forged = event_hash(3, T0, "check", "/x", "attacker", "{}", events[-1]["hash"])
    _sql(db_url, "INSERT INTO audit_events (seq, created_at, kind, subject, actor, payload, prev_hash, hash) "
                 f"VALUES (3, '2026-03-01 12:00:00.123456', 'check', '/x', 'attacker', '{{}}', '{events[-1]['hash']}', '{forged}')")
    report = _verify(db_url)
    assert (report.first_bad_id, report.problem) == (3, "inserted")


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
    third = _append(db_url, 1)[0]
    assert third["seq"] == 3
    assert _verify(db_url).summary() == "audit chain intact: 3 events"


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
    assert _verify(db_url).summary() == "audit chain intact: 3 events"


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


def _assert_chain_of(url: str, n: int) -> None:
    with get_engine(url).connect() as conn:
        rows = conn.exec_driver_sql("SELECT seq, prev_hash, hash FROM audit_events ORDER BY seq").all()
    assert [r.seq for r in rows] == list(range(1, n + 1))
    assert len({r.prev_hash for r in rows}) == n  # no two events share a predecessor
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, n))
    report = _verify(url)
    assert (report.ok, report.events) == (True, n)
