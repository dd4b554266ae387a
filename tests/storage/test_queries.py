"""Query and write helpers return plain data with exact values, and audit what they write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from storage import queries as q
from storage.engine import get_engine, session_scope
from storage.models import Promotion

T0 = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def _result(path: str, status: str, confidence: float, anomaly: float, findings: int = 0) -> dict:
    return {
        "image_path": path, "status": status, "confidence": confidence,
        "metrics": {"anomaly_score": anomaly, "mean_entropy": 7.5},
        "findings": [{"category": "corruption", "severity": "high", "description": f"f{i}",
                      "byte_range": [0, 4096], "region": None, "source": "integrity"} for i in range(findings)],
        "recommendation": "restore from golden copy" if status == "critical" else "none",
        "timestamp": T0.isoformat(), "duration_ms": 12.5,
    }


def _audit_kinds(url: str) -> list[tuple[str, str]]:
    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT kind, subject FROM audit_events ORDER BY seq")]


def test_upsert_image_registers_then_updates(db_url: str) -> None:
    with session_scope(db_url) as s:
        first = q.upsert_image(s, "/img/a.rts.png", critical=True, interval_s=60, golden_sha256="ab" * 32,
                               golden_path="/golden/a.rts.png", baseline={"blocks": [1, 2]}, now=T0)
    assert isinstance(first, dict)
    assert (first["id"], first["critical"], first["interval_s"], first["last_status"]) == (1, True, 60, "unknown")
    assert (first["registered_at"], first["baseline"], first["auto_heal_enabled"]) == (T0, {"blocks": [1, 2]}, False)
    with session_scope(db_url) as s:
        second = q.upsert_image(s, "/img/a.rts.png", interval_s=30, now=T0 + M)
        unchanged = q.upsert_image(s, "/img/a.rts.png", interval_s=30, now=T0 + 2 * M)
    assert (second["id"], second["critical"], second["interval_s"], second["registered_at"]) == (1, True, 30, T0)
    assert unchanged["interval_s"] == 30
    assert _audit_kinds(db_url) == [("image.registered", "/img/a.rts.png"), ("image.updated", "/img/a.rts.png")]
    with session_scope(db_url, write=False) as s:
        assert q.get_image(s, path="/img/a.rts.png")["golden_path"] == "/golden/a.rts.png"
        assert q.get_image(s, image_id=7) is None
        with pytest.raises(ValueError, match="exactly one of image_id or path"):
            q.get_image(s)


def test_record_check_updates_status_and_history(db_url: str) -> None:
    with session_scope(db_url) as s:
        image = q.upsert_image(s, "/img/a.rts.png", now=T0)
        q.upsert_image(s, "/img/b.rts.png", now=T0)
        q.record_check(s, _result("/img/a.rts.png", "healthy", 0.95, 0.1), file_size=4096, file_sha256="cd" * 32,
                       file_mtime_ns=1_700_000_000_123_456_789, now=T0 + M)
        q.record_check(s, _result("/img/a.rts.png", "critical", 0.99, 0.95, findings=2), now=T0 + 2 * M)
        adhoc = q.record_check(s, _result("/tmp/upload.png", "warning", 0.6, 0.75), now=T0 + 3 * M)
    assert adhoc["image_id"] is None
    with session_scope(db_url, write=False) as s:
        rows = q.list_images_with_latest_status(s)
        history = q.check_history(s, image["id"])
        latest = q.latest_check(s, image["id"])
        summary = q.fleet_summary(s)
        frame = q.check_history_frame(s, image["id"])
        since = q.check_history(s, image["id"], since=T0 + 2 * M)
    assert [(r["path"], r["last_status"], r["last_confidence"], r["last_findings_count"], r["last_checked_at"]) for r in rows] == [
        ("/img/a.rts.png", "critical", 0.99, 2, T0 + 2 * M),
        ("/img/b.rts.png", "unknown", None, None, None),
    ]
    assert [(h["status"], h["confidence"], h["created_at"]) for h in history] == [("healthy", 0.95, T0 + M), ("critical", 0.99, T0 + 2 * M)]
    assert history[0]["file_sha256"] == "cd" * 32
    assert latest["file_mtime_ns"] is None  # the newest check was recorded without file facts
    with get_engine(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT file_size, file_mtime_ns FROM checks WHERE id = 1").one() == (4096, 1_700_000_000_123_456_789)
    assert (latest["status"], latest["recommendation"], len(latest["findings"])) == ("critical", "restore from golden copy", 2)
    assert latest["findings"][0]["byte_range"] == [0, 4096]
    assert summary == {"healthy": 0, "warning": 0, "critical": 1, "unknown": 1, "total": 2, "marked_bad": 0}
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["created_at", "status", "confidence", "duration_ms", "anomaly_score", "mean_entropy",
                                   "findings", "reused_analysis"]
    assert frame["anomaly_score"].tolist() == [0.1, 0.95]
    assert frame["findings"].tolist() == [0, 2]
    assert [h["id"] for h in since] == [2]
    kinds = _audit_kinds(db_url)
    assert kinds[2:] == [("check", "/img/a.rts.png"), ("check", "/img/a.rts.png"), ("check", "/tmp/upload.png")]


def test_record_check_rejects_unknown_status_and_image(db_url: str) -> None:
    with session_scope(db_url) as s:
        with pytest.raises(ValueError, match="check status must be one of healthy, warning, critical, unknown, got 'fine'"):
            q.record_check(s, _result("/x", "fine", 1.0, 0.0))
        with pytest.raises(LookupError, match="image 42 is not registered"):
            q.record_check(s, _result("/x", "healthy", 1.0, 0.0), image_id=42)


def test_heal_flags_and_recent_heals(db_url: str) -> None:
    with session_scope(db_url) as s:
        image = q.upsert_image(s, "/img/a.rts.png", now=T0)
        heal = q.record_heal(s, image_path="/img/a.rts.png", action="restore", outcome="healed",
                             source_path="/golden/a.rts.png", quarantine_path="/q/a.rts.png.1",
                             detail={"bytes": 4096}, duration_ms=3.0, now=T0 + M)
        flags = q.set_image_flags(s, image["id"], consecutive_heal_failures=2, marked_bad=True, now=T0 + 2 * M)
    assert (heal["image_id"], heal["action"], heal["outcome"], heal["detail"]) == (image["id"], "restore", "healed", {"bytes": 4096})
    assert (flags["consecutive_heal_failures"], flags["marked_bad"], flags["updated_at"]) == (2, True, T0 + 2 * M)
    with session_scope(db_url, write=False) as s:
        heals = q.recent_heals(s, image_id=image["id"])
        assert q.fleet_summary(s)["marked_bad"] == 1
    assert [(h["id"], h["quarantine_path"], h["created_at"]) for h in heals] == [(1, "/q/a.rts.png.1", T0 + M)]
    assert _audit_kinds(db_url)[1:] == [("heal", "/img/a.rts.png"), ("image.updated", "/img/a.rts.png")]


def test_alerts_acknowledge_and_webhook_delivery(db_url: str) -> None:
    with session_scope(db_url) as s:
        a1 = q.record_alert(s, kind="image.critical", severity="critical", subject="/img/a.rts.png",
                            message="hash mismatch", reason="data_hash differs", webhook=True, now=T0)
        a2 = q.record_alert(s, kind="tuning.escalated", severity="warning", subject="vllm", message="no candidate", now=T0 + M)
        with pytest.raises(ValueError, match="alert severity must be one of info, warning, critical, got 'loud'"):
            q.record_alert(s, kind="k", severity="loud", subject="s", message="m")
    assert (a1["webhook_state"], a2["webhook_state"]) == ("pending", "none")
    with session_scope(db_url) as s:
        assert [a["id"] for a in q.pending_webhook_alerts(s)] == [a1["id"]]
        failed = q.mark_alert_delivery(s, a1["id"], delivered=False, error="HTTP 503", now=T0 + M)
        delivered = q.mark_alert_delivery(s, a1["id"], delivered=True, now=T0 + 2 * M)
        acked = q.acknowledge_alert(s, a2["id"], by="alice", now=T0 + 3 * M)
        again = q.acknowledge_alert(s, a2["id"], by="bob", now=T0 + 4 * M)
    assert (failed["webhook_state"], failed["webhook_last_error"]) == ("failed", "HTTP 503")
    assert (delivered["webhook_state"], delivered["webhook_attempts"], delivered["webhook_delivered_at"]) == ("delivered", 2, T0 + 2 * M)
    assert (acked["acknowledged_by"], again["acknowledged_by"], again["acknowledged_at"]) == ("alice", "alice", T0 + 3 * M)
    with session_scope(db_url, write=False) as s:
        assert [a["id"] for a in q.recent_alerts(s)] == [a2["id"], a1["id"]]
        assert [a["id"] for a in q.recent_alerts(s, include_acknowledged=False)] == [a1["id"]]
    assert [k for k, _ in _audit_kinds(db_url)] == ["alert", "alert", "alert.acknowledged"]


def test_audit_page_and_count_filters(db_url: str) -> None:
    from storage.audit import append_event

    with session_scope(db_url) as s:
        for i in range(30):
            append_event(s, "check" if i % 3 else "heal", f"/img/{i % 2}", {"i": i}, "w", now=T0 + i * M)
    with session_scope(db_url, write=False) as s:
        assert q.audit_count(s) == 30
        assert q.audit_count(s, kind="heal") == 10
        assert q.audit_count(s, kind="heal", subject="/img/0") == 5
        assert q.audit_count(s, start=T0 + 10 * M, end=T0 + 20 * M) == 10
        page = q.audit_page(s, kind="check", offset=2, limit=3)
        assert [e["payload"]["i"] for e in page] == [26, 25, 23]
        assert (page[0]["created_at"], page[0]["kind"], page[0]["subject"], page[0]["actor"], page[0]["seq"]) == (
            T0 + 26 * M, "check", "/img/0", "w", 27)
        assert [e["payload"]["i"] for e in q.audit_page(s, subject="/img/1", start=T0, end=T0 + 4 * M)] == [3, 1]
        assert q.audit_kinds(s) == ["check", "heal"]


def test_requests_enqueue_claim_finish(db_url: str) -> None:
    with session_scope(db_url) as s:
        r1 = q.enqueue_request(s, "check", "/img/a.rts.png", requested_by="alice", now=T0)
        r2 = q.enqueue_request(s, "tune", "vllm", requested_by="bob", now=T0 + M)
        with pytest.raises(ValueError, match="request kind must be one of check, heal, accept_change, tune, got 'reboot'"):
            q.enqueue_request(s, "reboot", "x", requested_by="eve")
    with session_scope(db_url) as s:
        claimed = q.claim_next_request(s, "worker-1", kinds=["tune"], now=T0 + 2 * M)
        first = q.claim_next_request(s, "worker-1", now=T0 + 2 * M)
        none_left = q.claim_next_request(s, "worker-1", now=T0 + 2 * M)
    assert (claimed["id"], claimed["status"], claimed["claimed_by"], claimed["started_at"]) == (r2["id"], "running", "worker-1", T0 + 2 * M)
    assert first["id"] == r1["id"] and none_left is None
    with session_scope(db_url, write=False) as s:
        assert [(r["id"], r["status"]) for r in q.pending_requests(s)] == [(1, "running"), (2, "running")]
    with session_scope(db_url) as s:
        done = q.finish_request(s, r1["id"], ok=True, result={"status": "healthy"}, now=T0 + 3 * M)
        failed = q.finish_request(s, r2["id"], ok=False, result={"error": "rate limited"}, now=T0 + 3 * M)
    assert (done["status"], done["result"], done["finished_at"]) == ("done", {"status": "healthy"}, T0 + 3 * M)
    assert failed["status"] == "failed"
    with session_scope(db_url, write=False) as s:
        assert q.pending_requests(s) == []
    assert [k for k, _ in _audit_kinds(db_url)] == ["request.enqueued", "request.enqueued", "request.finished", "request.finished"]


def test_heartbeat(db_url: str) -> None:
    with session_scope(db_url, write=False) as s:
        assert q.worker_heartbeat(s) is None
    with session_scope(db_url) as s:
        q.beat_heartbeat(s, "w1", pid=100, host="h", state="starting", now=T0)
        q.beat_heartbeat(s, "w1", pid=100, host="h", info={"jobs": 4}, now=T0 + M)
        with pytest.raises(ValueError, match="worker state must be one of"):
            q.beat_heartbeat(s, "w1", pid=100, host="h", state="asleep")
    with session_scope(db_url, write=False) as s:
        beat = q.worker_heartbeat(s, now=T0 + 3 * M)
    assert beat == {"worker_id": "w1", "pid": 100, "host": "h", "started_at": T0, "last_beat": T0 + M,
                    "state": "running", "info": {"jobs": 4}, "age_s": 120.0, "node": None}


def test_list_promotions(db_url: str) -> None:
    with session_scope(db_url) as s:
        s.add(Promotion(subsystem="vllm", old_values={"vllm.max_model_len": 8192}, new_values={"vllm.max_model_len": 4096},
                        status="pending_review", created_at=T0))
        s.add(Promotion(subsystem="vllm", old_values={}, new_values={}, status="applied", created_at=T0 + M))
    with session_scope(db_url, write=False) as s:
        pending = q.list_promotions(s, status="pending_review")
        everything = q.list_promotions(s)
    assert [(p["id"], p["new_values"]) for p in pending] == [(1, {"vllm.max_model_len": 4096})]
    assert [p["status"] for p in everything] == ["applied", "pending_review"]


def test_check_constraints_guard_vocabularies(db_url: str) -> None:
    with pytest.raises(sa.exc.IntegrityError, match="CHECK constraint failed|violates check constraint"):
        with session_scope(db_url) as s:
            s.add(Promotion(subsystem="vllm", old_values={}, new_values={}, status="maybe"))
