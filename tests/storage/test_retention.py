"""Unchanged checks summarised (storage.retention.record_unchanged) and retention (run_retention), on a
real SQLite file and on the suite's throwaway PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from healing.config import load_settings
from healing.errors import ConfigError
from storage import queries
from storage.audit import verify_chain
from storage.engine import session_scope
from storage.retention import (
    KIND_CHECK_SAMPLED,
    KIND_RETENTION,
    RetentionSettings,
    check_summary,
    is_unchanged,
    record_unchanged,
    run_retention,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
HEALTHY = {"status": "healthy", "confidence": 0.97, "metrics": {"anomaly_score": 0.01, "mean_entropy": 7.9},
           "findings": [], "recommendation": "", "duration_ms": 3.0}


def _image(url: str, path: str = "/img/a.rts.png", *, at: datetime = T0) -> int:
    with session_scope(url) as s:
        image = queries.upsert_image(s, path, actor="test", now=at)
        queries.record_check(s, {**HEALTHY, "image_path": path}, image_id=image["id"], file_size=4600,
                             file_sha256="a" * 64, reused_analysis=False, now=at)
    return int(image["id"])


def _count(url: str, sql: str, **params: object) -> int:
    with session_scope(url, write=False) as s:
        return int(s.execute(sa.text(sql), params).scalar_one())


def test_100_unchanged_checks_keep_the_configured_samples_and_count_100(db_url: str) -> None:
    image_id = _image(db_url)
    for n in range(1, 101):  # every 300 s for 30,000 s after the full check at T0
        with session_scope(db_url) as s:
            out = record_unchanged(s, [image_id], at=T0 + timedelta(seconds=300 * n), samples_every_s=3600)
        assert out["counted"] == 1
    # Samples when the newest row is ≥ 3600 s old: at 3600, 7200, …, 28800 s: 8 rows.
    assert _count(db_url, "SELECT count(*) FROM checks WHERE image_id = :i", i=image_id) == 1 + 8
    with session_scope(db_url, write=False) as s:
        summary = check_summary(s, image_id)
        history = queries.check_history(s, image_id)
        image = queries.get_image(s, image_id=image_id)
        latest = queries.latest_check(s, image_id)
        sampled_events = queries.audit_count(s, kind=KIND_CHECK_SAMPLED)
        check_events = queries.audit_count(s, kind="check")
    assert (summary["unchanged_checks"], summary["sampled_checks"]) == (100, 8)
    assert summary["first_unchanged_at"] == T0 + timedelta(seconds=300)
    assert summary["last_unchanged_at"] == image["last_checked_at"] == T0 + timedelta(seconds=30000)
    assert summary["last_sample_at"] == T0 + timedelta(seconds=28800)
    assert [row["created_at"] for row in history] == [T0 + timedelta(seconds=3600 * k) for k in range(9)]
    assert {(row["status"], row["confidence"], row["metrics"]["anomaly_score"]) for row in history} == {("healthy", 0.97, 0.01)}
    # The newest sample is the image's latest check: the next check's reuse reads the same analysis.
    assert (image["last_check_id"], latest["id"], latest["file_sha256"], latest["reused_analysis"]) == (
        summary["last_sample_check_id"], summary["last_sample_check_id"], "a" * 64, True)
    assert (sampled_events, check_events) == (8, 1)
    with session_scope(db_url, write=False) as s:
        assert verify_chain(s).ok


def test_a_change_a_finding_and_a_heal_are_kept_in_full(db_url: str) -> None:
    image_id = _image(db_url)
    with session_scope(db_url) as s:
        record_unchanged(s, [image_id], at=T0 + timedelta(seconds=300), samples_every_s=3600)
        critical = queries.record_check(s, {**HEALTHY, "image_path": "/img/a.rts.png", "status": "critical",
                                            "findings": [{"category": "corruption", "severity": "high",
                                                          "description": "CRC mismatch"}]},
                                        image_id=image_id, file_sha256="b" * 64, now=T0 + timedelta(seconds=600))
        queries.record_heal(s, image_path="/img/a.rts.png", action="restore", outcome="healed", image_id=image_id,
                            check_id=critical["id"], now=T0 + timedelta(seconds=601))
    with session_scope(db_url, write=False) as s:
        history = queries.check_history(s, image_id)
        assert [(r["status"], len(r["findings"])) for r in history] == [("healthy", 0), ("critical", 1)]
        assert queries.get_image(s, image_id=image_id)["last_status"] == "critical"
        assert [h["check_id"] for h in queries.recent_heals(s, image_id=image_id)] == [critical["id"]]
        assert check_summary(s, image_id)["unchanged_checks"] == 1


def test_is_unchanged_only_for_a_reused_identical_result_without_findings() -> None:
    last = {"status": "healthy", "findings": [], "file_sha256": "a" * 64}
    data = {"status": "healthy", "findings": []}
    facts = {"reused": True, "file_sha256": "a" * 64}
    assert is_unchanged(last, data, facts) is True
    assert is_unchanged(None, data, facts) is False
    assert is_unchanged(last, data, {**facts, "reused": False}) is False
    assert is_unchanged(last, data, {**facts, "file_sha256": "b" * 64}) is False
    assert is_unchanged(last, {**data, "status": "warning"}, facts) is False
    assert is_unchanged(last, {**data, "findings": [{"category": "security"}]}, facts) is False
    assert is_unchanged({**last, "status": "unknown"}, {**data, "status": "unknown"}, facts) is False


def test_one_batch_call_samples_many_images_in_one_audit_event(db_url: str) -> None:
    ids = [_image(db_url, f"/img/{n}.rts.png") for n in range(5)]
    with session_scope(db_url) as s:
        quiet = record_unchanged(s, ids, at=T0 + timedelta(seconds=300), samples_every_s=3600)
        due = record_unchanged(s, [*ids, 9999], at=T0 + timedelta(seconds=3600), samples_every_s=3600)
    assert (quiet["counted"], quiet["sampled"]) == (5, {})
    assert due["counted"] == 5 and sorted(due["sampled"]) == ids
    assert due["check_ids"] == due["sampled"]
    with session_scope(db_url, write=False) as s:
        [event] = queries.audit_page(s, kind=KIND_CHECK_SAMPLED)
    assert event["payload"]["counted"] == 5
    assert event["payload"]["samples"] == [[i, due["sampled"][i], "healthy", 2] for i in ids]


def test_cycle_updates_stay_on_their_page_on_postgresql(db_url: str) -> None:
    """Migration 0008: images and check_summaries keep half of each page free on PostgreSQL, so the
    unchanged checks' updates are heap-only (pruned in place) and the tables do not grow per cycle."""
    if not db_url.startswith("postgresql"):
        pytest.skip("fillfactor and HOT updates are PostgreSQL's (SQLite updates rows in place)")
    ids = [_image(db_url, f"/img/{n:03d}.rts.png") for n in range(300)]
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)

    def stats() -> tuple[int, int, int]:
        import time

        from storage.engine import dispose_engines

        dispose_engines()  # a backend that exits reports its statistics; an idle pooled one may wait 10 s
        with engine.connect() as conn:
            time.sleep(1.1)  # backends report their statistics at most once a second
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            return conn.exec_driver_sql(
                "SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size('images') FROM pg_stat_user_tables "
                "WHERE relname = 'images'").one()

    try:
        with engine.connect() as conn:
            options = dict(conn.exec_driver_sql("SELECT relname, reloptions FROM pg_class WHERE relname IN "
                                                "('images', 'check_summaries')").all())
        assert options == {"images": ["fillfactor=50"], "check_summaries": ["fillfactor=50"]}
        with session_scope(db_url) as s:
            record_unchanged(s, ids, at=T0 + timedelta(seconds=300), samples_every_s=0)
        updates, hot, size = stats()
        for n in range(2, 7):
            with session_scope(db_url) as s:
                record_unchanged(s, ids, at=T0 + timedelta(seconds=300 * n), samples_every_s=0)
        updates_after, hot_after, size_after = stats()
    finally:
        engine.dispose()
    assert (updates_after - updates, hot_after - hot, size_after - size) == (5 * 300, 5 * 300, 0)


def _settings(tmp_path: Path, url: str, **retention: object):
    import yaml

    config = tmp_path / "retention.yaml"
    config.write_text(yaml.safe_dump({"database_url": url, "storage": {"retention": retention}}))
    return load_settings(config)


def test_retention_deletes_what_is_older_than_the_limits(db_url: str, tmp_path: Path) -> None:
    now = T0 + timedelta(days=100)
    old, recent = now - timedelta(days=40), now - timedelta(days=10)
    image_id = _image(db_url, at=old - timedelta(days=1))
    with session_scope(db_url) as s:
        path = "/img/a.rts.png"
        old_checks = [queries.record_check(s, {**HEALTHY, "image_path": path}, image_id=image_id, now=old + timedelta(minutes=m))
                      for m in range(3)]
        queries.record_heal(s, image_path=path, action="restore", outcome="healed", image_id=image_id,
                            check_id=old_checks[0]["id"], now=old)
        for m in range(2):
            queries.record_check(s, {**HEALTHY, "image_path": path}, image_id=image_id, now=recent + timedelta(minutes=m))
        for acknowledged, at in ((True, old), (True, old), (False, old), (True, recent)):
            alert = queries.record_alert(s, kind="image.critical", severity="critical", subject=path, message="x", now=at)
            if acknowledged:
                queries.acknowledge_alert(s, alert["id"], by="op", now=at)
        for status, at in (("done", old), ("failed", old), ("pending", old), ("done", recent)):
            request = queries.enqueue_request(s, "check", path, requested_by="op", now=at)
            if status != "pending":
                queries.finish_request(s, request["id"], ok=status == "done", now=at)
        queries.beat_heartbeat(s, "w-old", pid=1, host="h", now=old)
        queries.beat_heartbeat(s, "w-new", pid=2, host="h", now=now - timedelta(days=6))
    checks_before = _count(db_url, "SELECT count(*) FROM checks")
    settings = _settings(tmp_path, db_url, alerts_days=30, audit_archive_after_days=0)
    result = run_retention(settings, now, url=db_url)
    # checks: the registration's and 3 old ones are older than 30 days; the healed one is kept.
    assert result == {"checks": 3, "alerts": 2, "requests": 2, "heartbeats": 1, "archived": None}
    assert _count(db_url, "SELECT count(*) FROM checks") == checks_before - 3 == 3
    assert _count(db_url, "SELECT count(*) FROM checks WHERE id = :i", i=old_checks[0]["id"]) == 1
    assert _count(db_url, "SELECT count(*) FROM alerts") == 2
    assert _count(db_url, "SELECT count(*) FROM alerts WHERE acknowledged = :f", f=False) == 1
    assert _count(db_url, "SELECT count(*) FROM run_requests") == 2
    assert _count(db_url, "SELECT count(*) FROM worker_heartbeats") == 1
    with session_scope(db_url, write=False) as s:
        [event] = queries.audit_page(s, kind=KIND_RETENTION)
        assert verify_chain(s).ok
    assert (event["payload"]["checks"], event["payload"]["alerts"], event["actor"]) == (3, 2, "retention")
    # Nothing left to delete: no rows, no event.
    assert run_retention(settings, now, url=db_url) == {"checks": 0, "alerts": 0, "requests": 0, "heartbeats": 0,
                                                        "archived": None}
    with session_scope(db_url, write=False) as s:
        assert queries.audit_count(s, kind=KIND_RETENTION) == 1


def test_retention_never_deletes_an_images_newest_check_and_archives_old_audit_events(sqlite_url: str,
                                                                                        tmp_path: Path) -> None:
    image_id = _image(sqlite_url)  # its only check is 1 year old
    now = T0 + timedelta(days=365)
    with session_scope(sqlite_url) as s:
        for n in range(4):
            queries.record_alert(s, kind="k", severity="info", subject="s", message=f"m{n}", now=now - timedelta(days=1))
    settings = _settings(tmp_path, sqlite_url, checks_days=1, audit_archive_after_days=30, batch_size=2)
    result = run_retention(settings, now, url=sqlite_url)
    assert result["checks"] == 0
    assert _count(sqlite_url, "SELECT count(*) FROM checks WHERE image_id = :i", i=image_id) == 1
    # image.registered + check at T0 are old: archived; the four recent alerts' events stay live.
    assert (result["archived"]["first_seq"], result["archived"]["last_seq"], result["archived"]["count"]) == (1, 2, 2)
    assert _count(sqlite_url, "SELECT min(seq) FROM audit_events") == 3
    with session_scope(sqlite_url, write=False) as s:
        report = verify_chain(s)
    assert (report.ok, report.archived, report.events) == (True, 2, 7)


def test_batches_delete_everything_in_several_transactions(sqlite_url: str, tmp_path: Path) -> None:
    image_id = _image(sqlite_url)
    with session_scope(sqlite_url) as s:
        for m in range(11):
            queries.record_check(s, {**HEALTHY, "image_path": "/img/a.rts.png"}, image_id=image_id,
                                 now=T0 + timedelta(minutes=m))
    settings = _settings(tmp_path, sqlite_url, checks_days=1, batch_size=4, audit_archive_after_days=0)
    assert run_retention(settings, T0 + timedelta(days=2), url=sqlite_url)["checks"] == 11
    assert _count(sqlite_url, "SELECT count(*) FROM checks") == 1


def test_settings_defaults_and_refusals(tmp_path: Path) -> None:
    defaults = RetentionSettings.from_settings(load_settings())
    assert dataclasses.asdict(defaults) == {
        "checks_days": 30.0, "alerts_days": 90.0, "requests_days": 30.0, "heartbeats_days": 7.0,
        "samples_every_s": 14400.0, "audit_archive_after_days": 30.0, "audit_archive_dir": None, "interval_s": 3600.0,
        "batch_size": 5000}
    docs = (Path(__file__).resolve().parents[2] / "docs" / "retention.md").read_text()
    for field in dataclasses.fields(RetentionSettings):
        assert f"`{field.name}`" in docs, field.name
    # The documented example is the defaults, key for key, and a valid configuration.
    example = tmp_path / "documented.yaml"
    example.write_text(docs.split("```yaml\n")[1].split("```")[0])
    assert RetentionSettings.from_settings(load_settings(example)) == defaults
    with pytest.raises(ConfigError, match=r"^config: unknown key storage.retention.check_days \(did you mean "
                                          r"storage.retention.checks_days\?\)$"):
        RetentionSettings.from_settings(_settings(tmp_path, "sqlite://", check_days=3))
    with pytest.raises(ConfigError, match="storage.retention.samples_every_s"):
        RetentionSettings.from_settings(_settings(tmp_path, "sqlite://", samples_every_s=-1))


def test_the_cli_refuses_a_misspelled_retention_key(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import selfheal_cmd, subprocess_env

    config = tmp_path / "c.yaml"
    config.write_text("storage:\n  retention:\n    alert_days: 3\n")
    out = subprocess.run([*selfheal_cmd(), "audit", "verify"], capture_output=True, text=True, timeout=60,
                         env=subprocess_env(SELFHEAL_HOME=str(tmp_path / "h"), SELFHEAL_CONFIG=str(config)))
    assert out.returncode == 3
    assert out.stderr.strip().splitlines()[-1].endswith(
        "config: unknown key storage.retention.alert_days (did you mean storage.retention.alerts_days?)")


def test_the_worker_registers_the_retention_job(tmp_path: Path) -> None:
    from apscheduler.schedulers.blocking import BlockingScheduler

    from healing.worker import JOB_HOOKS
    from storage.retention import RETENTION_JOB, register_jobs

    assert "storage.retention:register_jobs" in JOB_HOOKS
    scheduler = BlockingScheduler(timezone=UTC)
    settings = _settings(tmp_path, "sqlite://", interval_s=600)
    assert register_jobs(scheduler, settings, {"coalesce": True, "max_instances": 1}) == [RETENTION_JOB]
    [job] = scheduler.get_jobs()
    assert (job.id, job.trigger.interval.total_seconds(), job.coalesce, job.max_instances) == (RETENTION_JOB, 600, True, 1)


def test_a_large_backlog_is_archived_in_several_segments(sqlite_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.archive

    monkeypatch.setattr(storage.archive, "SEGMENT_MAX_EVENTS", 3)
    for n in range(4):
        _image(sqlite_url, f"/img/{n}.rts.png")  # 8 events at T0
    settings = _settings(tmp_path, sqlite_url, audit_archive_after_days=30)
    archived = run_retention(settings, T0 + timedelta(days=31), url=sqlite_url)["archived"]
    # 8 old events in segments of at most 3 (one transaction each): 1..3, 4..6, 7..8; the audit.archived
    # events (seq 9, 10, 11, written now) are newer than the cutoff and stay live.
    assert (archived["first_seq"], archived["last_seq"], archived["count"], len(archived["segments"])) == (1, 8, 8, 3)
    assert _count(sqlite_url, "SELECT count(*) FROM audit_events WHERE kind = 'audit.archived'") == 3
    with session_scope(sqlite_url, write=False) as s:
        report = verify_chain(s)
    assert (report.ok, report.segments, report.archived, report.events) == (True, 3, 8, 11)


def test_record_cycle_checks_summarises_the_quiet_ones_and_stores_the_rest(sqlite_url: str) -> None:
    """The drop-in for the worker's batched cycle (storage.worker_queries.record_reused_checks)."""
    from storage.retention import record_cycle_checks

    ids = [_image(sqlite_url, f"/img/{n}.rts.png") for n in range(3)]
    with session_scope(sqlite_url, write=False) as s:
        first_checks = [queries.get_image(s, image_id=i)["last_check_id"] for i in ids]
    finding = {"category": "performance", "severity": "low", "description": "slow"}
    checks = [{**HEALTHY, "image_id": i, "image_path": f"/img/{n}.rts.png", "file_size": 4600, "file_sha256": "a" * 64,
               "file_mtime_ns": 1} for n, i in enumerate(ids)]
    checks[1] = {**checks[1], "status": "warning", "findings": [finding]}
    with session_scope(sqlite_url) as s:
        out = record_cycle_checks(s, checks, actor="worker", now=T0 + timedelta(seconds=300), samples_every_s=3600)
    assert out[0] == first_checks[0] and out[2] == first_checks[2]  # summarised: no new row
    assert out[1] not in first_checks
    assert _count(sqlite_url, "SELECT count(*) FROM checks") == 4
    with session_scope(sqlite_url, write=False) as s:
        assert [check_summary(s, i) is not None for i in ids] == [True, False, True]
        assert queries.get_image(s, image_id=ids[1])["last_status"] == "warning"
        assert queries.audit_count(s, kind="check") == 4
