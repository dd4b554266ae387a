"""Operator actions written as rows (requests, promotion decisions) and the dashboard's own queries."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dashboard import actions, data
from healing.config import load_settings
from storage import queries
from storage.audit import verify_chain
from storage.engine import session_scope
from storage.models import Promotion
from tests.dashboard.conftest import T0


def test_request_run_queues_once_per_kind_and_target(seeded: dict[str, Any]) -> None:
    path = seeded["image_path"]
    first = actions.request_run("heal", path, "alice")
    again = actions.request_run("heal", path, "bob")
    other = actions.request_run("check", path, "bob")
    assert (first["duplicate"], again["duplicate"], other["duplicate"]) == (False, True, False)
    assert again["id"] == first["id"] and again["requested_by"] == "alice"
    with session_scope(write=False) as s:
        pending = queries.pending_requests(s)
        events = queries.audit_page(s, kind="request.enqueued")
    assert [(r["kind"], r["requested_by"]) for r in pending] == [("heal", "alice"), ("check", "bob")]
    assert sorted(e["actor"] for e in events) == ["alice", "bob"]


def test_request_run_refuses_unknown_kinds_and_unregistered_targets(seeded: dict[str, Any]) -> None:
    with pytest.raises(actions.ActionRefused, match="unknown request kind 'tune'"):
        actions.request_run("tune", seeded["image_path"], "alice")
    with pytest.raises(actions.ActionRefused, match="/nope.rts.png is not a registered image"):
        actions.request_run("check", "/nope.rts.png", "alice")


def test_promotion_decided_once_and_audited(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    row = actions.decide_promotion(pid, True, "alice", reason="  fine\nby me ")
    # approval is carried out at once: the new value is written to the target config file
    assert (row["status"], row["decided_by"], row["reason"]) == ("applied", "alice", "fine by me")
    assert seeded["target_file"].read_text() == "gpu-memory-utilization: 0.85\n"  # vLLM's own --config keys
    with pytest.raises(actions.ActionRefused, match=f"promotion {pid} is already applied by alice"):
        actions.decide_promotion(pid, False, "bob")
    with session_scope(write=False) as s:
        events = queries.audit_page(s, kind=actions.KIND_PROMOTION_APPROVED)
        assert verify_chain(s).ok
    assert len(events) == 1
    assert events[0]["actor"] == "alice"
    assert events[0]["payload"]["new_values"] == {"vllm.gpu_memory_utilization": 0.85}
    assert events[0]["payload"]["reason"] == "fine by me"


def test_expired_or_missing_promotions_are_refused(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    with pytest.raises(actions.ActionRefused, match=f"promotion {pid} expired at"):
        actions.decide_promotion(pid, True, "alice", now=datetime.now(UTC) + timedelta(days=2))
    with session_scope(write=False) as s:
        assert s.get(Promotion, pid).status == "pending_review"
    with pytest.raises(actions.ActionRefused, match="promotion 999 does not exist"):
        actions.decide_promotion(999, False, "alice")


def test_acknowledge_missing_alert(seeded: dict[str, Any]) -> None:
    with pytest.raises(actions.ActionRefused, match="alert 77 does not exist"):
        actions.acknowledge_alert(77, "alice")


def test_value_changes_side_by_side() -> None:
    frame = data.value_changes({"a": 1, "b": 0.9}, {"b": 0.85, "c": [1, 2]})
    assert frame.to_dict("records") == [
        {"parameter": "a", "current": "1", "proposed": "—", "changed": True},
        {"parameter": "b", "current": "0.9", "proposed": "0.85", "changed": True},
        {"parameter": "c", "current": "—", "proposed": "[1, 2]", "changed": True},
    ]


def test_audit_csv_export_round_trips_the_chain(seeded: dict[str, Any]) -> None:
    text = data.audit_csv(kind="check")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(data.AUDIT_CSV_COLUMNS)
    assert [r["kind"] for r in rows] == ["check", "check"]
    assert rows[0]["created_at"] == "2026-03-01T12:10:00Z"  # newest first
    with session_scope(write=False) as s:
        newest = queries.audit_page(s, kind="check", limit=1)[0]
    assert rows[0]["hash"] == newest["hash"] and int(rows[0]["seq"]) == newest["seq"]
    assert data.audit_csv(kind="check", max_rows=1).count("\n") == 2
    window = data.audit_csv(start=T0 + timedelta(minutes=6), end=T0 + timedelta(minutes=10, seconds=1), kind="check")
    assert window.count("\n") == 2


def test_image_detail_and_frame(seeded: dict[str, Any]) -> None:
    detail = data.image_detail(image_id=seeded["image_id"])
    assert detail["image"]["name"] == "boot" and "baseline" not in detail["image"]
    assert list(detail["history"]["anomaly_score"]) == [0.1, 0.75]
    assert data.image_detail(image_id=999) is None
    frame = data.images_frame()
    assert list(frame["last_status"]) == ["warning"] and list(frame["last_findings_count"]) == [1]


def test_worker_status_states(seeded: dict[str, Any]) -> None:
    assert data.worker_status()["state"] == "running"
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert data.worker_status(now=later, stale_after_s=120)["state"] == "stale"


def test_worker_status_absent(_isolated_home: Path) -> None:
    from storage.migrate import upgrade

    upgrade()
    assert data.worker_status() == {"state": "absent", "beat": None, "pending_requests": 0, "down": []}


def test_rate_limits_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("tuning:\n  rate_limits:\n    max_runs: 5\n    cooldown_s: 60\n    unknown_key: 1\n")
    limits = data.rate_limits_from_settings(load_settings(config))
    assert (limits.max_runs, limits.cooldown_s, limits.window_s) == (5, 60, 86400)


def test_tuning_runs_carry_their_candidates(seeded: dict[str, Any]) -> None:
    runs = data.tuning_runs()
    assert [r["id"] for r in runs] == [seeded["run_id"]]
    assert [c["score"] for c in runs[0]["candidates"]] == [0.82]
    states = data.rate_limit_states()
    assert [(s["subsystem"], s["runs_used"], s["allowed"]) for s in states] == [("vllm", 1, False)]
