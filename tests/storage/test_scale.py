"""The dashboard's queries stay fast with 100,000 audit events and 1,000 images (pages ≤ 1.5 s)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage import queries as q
from storage.audit import GENESIS_HASH, canonical_json, event_hash, verify_chain
from storage.engine import get_engine, session_scope

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_EVENTS = 100_000
N_IMAGES = 1_000
CHECKS_PER_IMAGE = 20
KINDS = ("check", "heal", "alert", "image.registered", "tuning.run_claimed")
PAGE_BUDGET_S = 1.5


def _sqlite_ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _seed(url: str) -> None:
    """Bulk-load a valid chain and a fleet with raw executemany (append_event one by one would take minutes)."""
    events = []
    prev = GENESIS_HASH
    for i in range(1, N_EVENTS + 1):
        created = T0 + timedelta(seconds=i)
        kind = KINDS[i % len(KINDS)]
        subject = f"/img/{i % N_IMAGES}.rts.png"
        payload = canonical_json({"i": i})
        digest = event_hash(i, created, kind, subject, "worker", payload, prev)
        events.append((i, i, _sqlite_ts(created), kind, subject, "worker", payload, prev, digest))
        prev = digest
    images = [(i, f"/img/{i}.rts.png", ("healthy", "warning", "critical", "unknown")[i % 4], _sqlite_ts(T0), i * CHECKS_PER_IMAGE)
              for i in range(1, N_IMAGES + 1)]
    checks = [((i - 1) * CHECKS_PER_IMAGE + k + 1, i, f"/img/{i}.rts.png", "healthy", 0.9, '{"anomaly_score": 0.1}', "[]",
               _sqlite_ts(T0 + timedelta(minutes=k)))
              for i in range(1, N_IMAGES + 1) for k in range(CHECKS_PER_IMAGE)]
    alerts = [(f"/img/{i}.rts.png", _sqlite_ts(T0 + timedelta(seconds=i))) for i in range(2_000)]
    with get_engine(url).begin() as conn:
        raw = conn.connection.driver_connection
        raw.executemany("INSERT INTO audit_events (id, seq, created_at, kind, subject, actor, payload, prev_hash, hash) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        raw.execute("UPDATE audit_head SET seq = ?, last_event_id = ?, last_hash = ?", (N_EVENTS, N_EVENTS, prev))
        raw.executemany("INSERT INTO images (id, path, critical, interval_s, auto_heal_enabled, marked_bad, "
                        "consecutive_heal_failures, last_status, registered_at, updated_at, last_check_id) "
                        "VALUES (?, ?, 0, 300, 0, 0, 0, ?, ?, ?4, ?5)", images)
        raw.executemany("INSERT INTO checks (id, image_id, image_path, status, confidence, metrics, findings, duration_ms, "
                        "reused_analysis, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 5.0, 0, ?)", checks)
        raw.executemany("INSERT INTO alerts (kind, severity, subject, message, created_at, acknowledged, webhook_state, "
                        "webhook_attempts) VALUES ('image.critical', 'critical', ?, 'm', ?, 0, 'none', 0)", alerts)
        raw.execute("ANALYZE")


@pytest.mark.slow
def test_dashboard_queries_at_scale(sqlite_url: str, db_path: Path) -> None:
    db_url = sqlite_url
    _seed(db_url)
    timings: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    with session_scope(db_url, write=False) as s:
        images = timed("list_images", lambda: q.list_images_with_latest_status(s))
        summary = timed("fleet_summary", lambda: q.fleet_summary(s))
        history = timed("check_history", lambda: q.check_history(s, 500, limit=1000))
        first = timed("audit_page", lambda: q.audit_page(s, limit=50))
        deep = timed("audit_page_deep", lambda: q.audit_page(s, offset=90_000, limit=50))
        by_kind = timed("audit_page_kind", lambda: q.audit_page(s, kind="heal", start=T0 + timedelta(hours=5), limit=50))
        count = timed("audit_count", lambda: q.audit_count(s))
        count_kind = timed("audit_count_kind", lambda: q.audit_count(s, kind="heal", start=T0, end=T0 + timedelta(hours=10)))
        subject = timed("audit_page_subject", lambda: q.audit_page(s, subject="/img/7.rts.png", limit=50))
        kinds = timed("audit_kinds", lambda: q.audit_kinds(s))
        alerts = timed("recent_alerts", lambda: q.recent_alerts(s, limit=100))
        pending = timed("pending_requests", lambda: q.pending_requests(s))
    with session_scope(db_url, write=False) as s:
        report = timed("verify_chain", lambda: verify_chain(s))

    assert len(images) == N_IMAGES and images[0]["last_confidence"] == 0.9
    assert summary == {"healthy": 250, "warning": 250, "critical": 250, "unknown": 250, "total": 1000, "marked_bad": 0}
    assert len(history) == CHECKS_PER_IMAGE
    assert [e["seq"] for e in first[:3]] == [100_000, 99_999, 99_998]
    assert [e["seq"] for e in deep[:2]] == [10_000, 9_999]
    assert all(e["kind"] == "heal" for e in by_kind) and len(by_kind) == 50
    assert count == N_EVENTS
    assert count_kind == 7_200  # one in five of the first 36,000 seconds
    assert [e["seq"] for e in subject[:2]] == [99_007, 98_007]
    assert kinds == sorted(KINDS)
    assert len(alerts) == 100 and pending == []
    assert (report.ok, report.events) == (True, N_EVENTS)

    page_queries = {k: v for k, v in timings.items() if k != "verify_chain"}
    print("timings (s):", {k: round(v, 4) for k, v in timings.items()})
    slow = {k: v for k, v in page_queries.items() if v > PAGE_BUDGET_S / 3}
    assert slow == {}, f"queries over a third of the page budget: {slow}"
    assert sum(page_queries.values()) < PAGE_BUDGET_S
    assert timings["verify_chain"] < 10.0
