"""The background audit-chain verifier behind the Audit page."""

from __future__ import annotations

import time
from typing import Any

from dashboard.chain import ChainVerifier
from storage.engine import get_engine


def test_first_report_arrives_within_the_wait_and_is_reused(seeded: dict[str, Any]) -> None:
    verifier = ChainVerifier(None)
    state = verifier.latest(wait_s=10)
    report = state["report"]
    assert (report["ok"], report["events"], state["error"]) == (True, 6, None)
    again = verifier.latest(max_age_s=300)
    assert again["report"] is report and again["running"] is False


def test_stale_report_is_refreshed_and_sees_tampering(seeded: dict[str, Any]) -> None:
    verifier = ChainVerifier(None)
    assert verifier.latest(wait_s=10)["report"]["ok"] is True
    with get_engine().begin() as conn:
        conn.exec_driver_sql("UPDATE audit_events SET subject = 'elsewhere' WHERE seq = 3")
    verifier.latest(max_age_s=0)  # too old: a new verification starts; the old report is shown meanwhile
    deadline = time.monotonic() + 10
    while verifier.running and time.monotonic() < deadline:
        time.sleep(0.02)
    report = verifier.latest(max_age_s=300)["report"]
    assert (report["ok"], report["first_bad_id"], report["problem"]) == (False, 3, "edited")


def test_database_errors_reach_the_page_as_one_line(tmp_path: Any) -> None:
    verifier = ChainVerifier(f"sqlite:///{tmp_path}/empty.db")
    state = verifier.latest(wait_s=10)
    assert state["report"] is None
    assert "no such table" in state["error"]
    assert "\n" not in state["error"]
