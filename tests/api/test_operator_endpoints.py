"""Operator endpoints against a real `selfheal api`: images, run-now requests, promotions, tuning, observe,
audit (filters, paging, exports, verify), metrics, and a locked database."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.api.conftest import ApiServer, make_image, one_line_error

ROOT = Path(__file__).resolve().parents[2]


def _register(api: ApiServer, path: Path, **extra: object) -> dict:
    response = api.client(api.tokens["ops"]).post("/api/v1/images", json={"path": str(path), **extra})
    assert response.status_code == 201, response.text
    return response.json()


def test_register_list_filter_page_and_detail(api: ApiServer, tmp_path: Path) -> None:
    a = _register(api, make_image(tmp_path / "a.rts.png", seed=3), critical=True, interval_s=120)
    b = _register(api, make_image(tmp_path / "b.rts.png", seed=4))
    assert a["success"] is True and a["hash_verified"] is True and a["changed"] is False
    assert (a["image"]["critical"], a["image"]["interval_s"], a["image"]["last_status"]) == (True, 120, "unknown")
    viewer = api.client(api.tokens["watcher"])
    listed = viewer.get("/api/v1/images", params={"status": "unknown"}).json()
    paths = [row["path"] for row in listed["images"]]
    assert str(tmp_path / "a.rts.png") in paths and str(tmp_path / "b.rts.png") in paths
    page = viewer.get("/api/v1/images", params={"status": "unknown", "offset": 1, "limit": 1}).json()
    assert (page["total"], page["offset"], page["limit"], len(page["images"])) == (listed["total"], 1, 1, 1)
    assert page["images"][0]["path"] == paths[1]
    assert viewer.get("/api/v1/images", params={"status": "critical"}).json()["images"] == []
    assert one_line_error(viewer.get("/api/v1/images", params={"status": "sick"}), 422).startswith("status: Input should be")
    detail = viewer.get(f"/api/v1/images/{b['image']['id']}").json()
    assert detail["image"]["path"] == str(tmp_path / "b.rts.png")
    assert (detail["latest_check"], detail["findings"], detail["heals"], detail["requests"]) == (None, [], [], [])
    # register made parity beside the golden copy (healing.parity_percent 2): the detail reports it
    size = (tmp_path / "b.rts.png").stat().st_size
    parity = detail["parity"]
    assert (parity["present"], parity["parity_intact"], parity["last_verified"]) == (True, True, None)
    assert 0 < parity["recoverable_burst_bytes"] < size and 0 < parity["overhead_percent"] < 100


def test_register_refuses_bad_paths_with_one_line(api: ApiServer, tmp_path: Path) -> None:
    ops = api.client(api.tokens["ops"])
    missing = tmp_path / "missing.rts.png"
    assert one_line_error(ops.post("/api/v1/images", json={"path": str(missing)}), 400) == f"{missing}: no such file"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert one_line_error(ops.post("/api/v1/images", json={"path": str(text)}), 400) == f"{text}: not a PNG image (bad signature)"
    assert one_line_error(ops.post("/api/v1/images", json={"path": ""}), 422) == \
        "path: String should have at least 1 character"


def test_check_heal_and_accept_change_are_queued_for_the_worker_and_audited(api: ApiServer, tmp_path: Path) -> None:
    image = _register(api, make_image(tmp_path / "q.rts.png", seed=5))["image"]
    ops = api.client(api.tokens["ops"])
    first = ops.post(f"/api/v1/images/{image['id']}/check")
    assert first.status_code == 202
    again = ops.post(f"/api/v1/images/{image['id']}/check").json()
    assert again["duplicate"] is True and again["request"]["id"] == first.json()["request"]["id"]
    heal = ops.post(f"/api/v1/images/{image['id']}/heal").json()
    accept = ops.post(f"/api/v1/images/{image['id']}/accept-change").json()
    assert (heal["request"]["kind"], accept["request"]["kind"]) == ("heal", "accept_change")
    request = first.json()["request"]
    assert (request["kind"], request["target"], request["requested_by"], request["status"]) == (
        "check", image["path"], "api:ops", "pending")
    polled = api.client(api.tokens["watcher"]).get(f"/api/v1/requests/{request['id']}").json()["request"]
    assert polled["status"] == "pending" and polled["id"] == request["id"]
    detail = api.client(api.tokens["watcher"]).get(f"/api/v1/images/{image['id']}").json()
    assert sorted(r["kind"] for r in detail["requests"]) == ["accept_change", "check", "heal"]
    with sqlite3.connect(api.home / "selfheal.db") as db:
        rows = db.execute("SELECT kind, actor FROM audit_events WHERE subject = ? ORDER BY seq", (image["path"],)).fetchall()
    assert rows[-3:] == [("request.enqueued", "api:ops")] * 3
    assert one_line_error(ops.post("/api/v1/images/987654/heal"), 404) == "image 987654 is not registered"
    assert one_line_error(api.client(api.tokens["watcher"]).get("/api/v1/requests/987654"), 404) == \
        "request 987654 does not exist"


def _promotion(status: str = "pending_review", target: Path | None = None) -> int:
    from healing.tuning.actuators import GMU
    from storage import tuning_queries as tq
    from storage.engine import session_scope

    with session_scope() as session:
        return int(tq.create_promotion(session, run_id=None, candidate_id=None, subsystem="vllm", old_values={GMU: 0.8},
                                       new_values={GMU: 0.9}, status=status, reason="canary passed with score 0.9",
                                       expires_at=datetime.now(UTC) + timedelta(hours=1),
                                       target_file=str(target) if target else None)["id"])


def test_promotions_list_approve_reject_and_conflicts(server_home: ApiServer) -> None:
    api = server_home
    approve_id, reject_id = _promotion(target=api.target), _promotion(target=api.target)
    viewer, ops = api.client(api.tokens["watcher"]), api.client(api.tokens["ops"])
    listed = viewer.get("/api/v1/promotions", params={"status": "pending_review"}).json()["promotions"]
    assert {approve_id, reject_id} <= {p["id"] for p in listed}
    rejected = ops.post(f"/api/v1/promotions/{reject_id}/reject", json={"reason": "not now"}).json()["promotion"]
    assert (rejected["status"], rejected["decided_by"]) == ("rejected", "api:ops")
    error = one_line_error(ops.post(f"/api/v1/promotions/{reject_id}/approve"), 409)
    assert error == f"promotion {reject_id} is already rejected by api:ops"
    applied = ops.post(f"/api/v1/promotions/{approve_id}/approve").json()["promotion"]
    assert (applied["status"], applied["decided_by"]) == ("applied", "api:ops")
    assert "gpu-memory-utilization: 0.9" in api.target.read_text()
    assert viewer.get(f"/api/v1/promotions/{approve_id}").json()["promotion"]["status"] == "applied"
    assert one_line_error(ops.post("/api/v1/promotions/424242/approve"), 404) == "promotion 424242 does not exist"
    assert one_line_error(viewer.get("/api/v1/promotions/424242"), 404) == "promotion 424242 does not exist"


def test_rollback_restores_an_applied_promotion(server_home: ApiServer) -> None:
    api = server_home
    api.target.write_text("gpu-memory-utilization: 0.8\n")
    promotion_id = _promotion(target=api.target)
    ops = api.client(api.tokens["ops"])
    assert ops.post(f"/api/v1/promotions/{promotion_id}/approve").json()["promotion"]["status"] == "applied"
    response = ops.post(f"/api/v1/promotions/{promotion_id}/rollback", json={"reason": "latency went up"})
    if response.status_code == 501:
        pytest.skip("the tuning loop of this checkout has no rollback_promotion")
    assert response.status_code == 200, response.text
    assert response.json()["promotion"]["status"] == "rolled_back"
    assert "gpu-memory-utilization: 0.8" in api.target.read_text()
    assert one_line_error(ops.post(f"/api/v1/promotions/{promotion_id}/rollback"), 409).startswith(f"promotion {promotion_id}")


def test_tuning_status_and_rate_limits(api: ApiServer) -> None:
    viewer = api.client(api.tokens["watcher"])
    status = viewer.get("/api/v1/tuning/status").json()
    assert status["success"] is True and status["mode"] == "prod"
    assert status["limits"]["max_runs"] == 3 and status["limits"]["cooldown_s"] == 6 * 3600
    [vllm] = status["subsystems"]
    assert (vllm["subsystem"], vllm["runs_used"], vllm["allowed"]) == ("vllm", 0, True)
    limits = viewer.get("/api/v1/tuning/rate-limits").json()
    assert limits["limits"] == status["limits"] and limits["subsystems"][0]["max_runs"] == 3


def test_tune_observe_returns_what_the_cli_prints(api: ApiServer) -> None:
    from healing.tuning.observer import observe_file

    log = ROOT / "tests/tuning/replay/cuda_oom_alloc_larger_than_card_dotsocr.log"
    response = api.client(api.tokens["watcher"]).post("/api/v1/tune/observe", files={"file": (log.name, log.read_bytes())})
    assert response.status_code == 200, response.text
    events = response.json()["events"]
    assert events == json.loads(json.dumps([e.to_json() for e in observe_file(log)]))
    assert [(e["class"], e["escalate"]) for e in events] == [("cuda_oom_torch", True)]
    bad = api.client(api.tokens["watcher"]).post("/api/v1/tune/observe", files={"file": ("x.log", b"hello\n")},
                                                 data={"current": "gmu"})
    assert one_line_error(bad, 400).startswith("current: ")


def test_audit_filters_paging_exports_and_verify(api: ApiServer) -> None:
    viewer = api.client(api.tokens["watcher"])
    everything = viewer.get("/api/v1/audit", params={"limit": 1000}).json()
    assert everything["total"] == len(everything["events"]) >= 5
    tokens = viewer.get("/api/v1/audit", params={"kind": "api.token.created"}).json()
    assert {e["subject"] for e in tokens["events"]} >= {"api-token:ops", "api-token:watcher", "api-token:gone"}
    assert all(set(e["payload"]) == {"name", "role"} for e in tokens["events"])
    page = viewer.get("/api/v1/audit", params={"offset": 1, "limit": 2}).json()
    assert [e["seq"] for e in page["events"]] == [e["seq"] for e in everything["events"][1:3]]
    later = datetime.now(UTC) + timedelta(days=1)
    assert viewer.get("/api/v1/audit", params={"start": later.isoformat()}).json()["total"] == 0
    assert one_line_error(viewer.get("/api/v1/audit", params={"start": "2026-01-01T00:00:00"}), 400) == \
        "start needs a time zone, e.g. 2026-12-01T00:00:00Z"
    exported = viewer.get("/api/v1/audit/export", params={"format": "csv", "kind": "api.token.created"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0] == ["seq", "created_at", "kind", "subject", "actor", "payload", "hash", "prev_hash"]
    assert len(rows) - 1 == tokens["total"]
    lines = viewer.get("/api/v1/audit/export", params={"format": "jsonl"}).text.splitlines()
    assert len(lines) >= everything["total"]
    assert {json.loads(line)["seq"] for line in lines} >= {e["seq"] for e in everything["events"]}
    verified = viewer.get("/api/v1/audit/verify").json()
    assert verified["ok"] is True and verified["events"] >= everything["total"]
    assert verified["summary"].startswith("audit chain intact: ")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_metrics_read_the_database_on_each_scrape(server_home: ApiServer, tmp_path: Path) -> None:
    from storage import queries
    from storage.engine import session_scope

    api = server_home
    client = api.client()
    before = client.get("/metrics").text
    image = _register(api, make_image(tmp_path / "m.rts.png", seed=9))["image"]
    with session_scope() as session:
        queries.record_check(session, {"image_path": image["path"], "status": "critical", "confidence": 0.99,
                                       "duration_ms": 70.0, "findings": []}, actor="test")
        queries.beat_heartbeat(session, "w-test", pid=1, host="box", state="running",
                               now=datetime.now(UTC) - timedelta(seconds=30))
    api.client(api.tokens["watcher"]).get("/api/v1/audit/verify")
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert _metric(text, 'selfheal_checks_total{status="critical"}') == _metric(before, 'selfheal_checks_total{status="critical"}') + 1
    assert _metric(text, 'selfheal_images{status="critical"}') >= 1
    assert _metric(text, 'selfheal_check_duration_seconds_bucket{le="0.1"}') - _metric(
        text, 'selfheal_check_duration_seconds_bucket{le="0.05"}') >= 1
    assert _metric(text, "selfheal_check_duration_seconds_count") == _metric(text, 'selfheal_check_duration_seconds_bucket{le="+Inf"}')
    age = _metric(text, 'selfheal_worker_heartbeat_age_seconds{host="box",state="running",worker_id="w-test"}')
    assert 29 <= age < 120
    assert _metric(text, "selfheal_audit_chain_ok") == 1
    assert _metric(text, 'selfheal_tuning_runs_max{subsystem="vllm"}') == 3
    assert _metric(text, "selfheal_scrape_database_ok") == 1
    with sqlite3.connect(api.home / "selfheal.db") as db:
        seq = db.execute("SELECT seq FROM audit_head").fetchone()[0]
    assert _metric(text, "selfheal_audit_events") == seq


def test_a_locked_database_answers_503_with_one_line(api: ApiServer, tmp_path: Path) -> None:
    image = _register(api, make_image(tmp_path / "l.rts.png", seed=11))["image"]
    holder = sqlite3.connect(api.home / "selfheal.db", isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock; WAL readers still read
        assert api.client(api.tokens["watcher"]).get("/api/v1/images").status_code == 200
        response = api.client(api.tokens["ops"]).post(f"/api/v1/images/{image['id']}/heal")
        error = one_line_error(response, 503)
        assert error.startswith("database is locked: another process held it for more than 300 ms")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert api.client(api.tokens["ops"]).post(f"/api/v1/images/{image['id']}/heal").status_code == 202


@pytest.mark.slow  # a worker subprocess
def test_a_check_requested_through_the_api_is_carried_out_by_the_worker(api: ApiServer, tmp_path: Path) -> None:
    image = _register(api, make_image(tmp_path / "w.rts.png", seed=21))["image"]
    ops = api.client(api.tokens["ops"])
    request = ops.post(f"/api/v1/images/{image['id']}/check").json()["request"]
    done = api.cli("worker", "--once", "--json")
    assert done.returncode == 0, done.stderr
    polled = api.client(api.tokens["watcher"]).get(f"/api/v1/requests/{request['id']}").json()["request"]
    assert (polled["status"], polled["kind"], polled["requested_by"]) == ("done", "check", "api:ops")
    detail = api.client(api.tokens["watcher"]).get(f"/api/v1/images/{image['id']}").json()
    assert detail["image"]["last_status"] == "healthy"
    assert detail["latest_check"]["status"] == "healthy" and detail["findings"] == []
