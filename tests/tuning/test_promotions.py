"""Promotions: approve (apply with backup, reload), reject, expire; errors are one line."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from healing.errors import ConfigError, InputError
from healing.tuning.actuators import GMU, MAX_NUM_SEQS
from healing.tuning.promotions import (
    approve_promotion,
    expire_promotions,
    read_target_values,
    reject_promotion,
    write_target_values,
)
from storage import tuning_queries as tq
from storage.engine import session_scope
from storage.models import AuditEvent
from tests.tuning._orchestration import configure, db_url, write_target  # noqa: F401 - fixture

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _promotion(target: Path | None, new: dict, old: dict | None = None, expires: datetime | None = None) -> int:
    with session_scope() as session:
        promo = tq.create_promotion(session, run_id=None, candidate_id=None, subsystem="vllm", old_values=old or {},
                                    new_values=new, status="pending_review", reason="canary passed",
                                    expires_at=expires or T0 + timedelta(hours=24), target_file=str(target) if target else None,
                                    now=T0)
    return int(promo["id"])


def _events(kind: str) -> list[dict]:
    from sqlmodel import select

    with session_scope(write=False) as session:
        return [json.loads(e.payload) for e in session.exec(select(AuditEvent).where(AuditEvent.kind == kind))]


def test_approve_writes_atomically_keeps_other_keys_and_backs_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 db_url: str) -> None:  # noqa: F811
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    old_text = target.read_text()
    settings = configure(tmp_path, monkeypatch, {"target_config": str(target)})
    pid = _promotion(target, {GMU: 0.9, MAX_NUM_SEQS: 8}, {GMU: 0.8, MAX_NUM_SEQS: 16})

    promo = approve_promotion(None, pid, "alice", settings=settings, now=T0 + timedelta(hours=1))

    assert (promo["status"], promo["decided_by"], promo["applied_at"]) == ("applied", "alice", T0 + timedelta(hours=1))
    assert yaml.safe_load(target.read_text()) == {"served_model": "demo",
                                                   "vllm": {"gpu_memory_utilization": 0.9, "max_num_seqs": 8, "max_model_len": 4096}}
    assert promo["backup_path"] == f"{target}.bak-20260501T130000-p{pid}"
    assert Path(promo["backup_path"]).read_text() == old_text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".vllm.yaml")] == []  # no temp file left
    assert [e["to"] for e in _events("promotion.approved")] == ["approved"]
    assert _events("promotion.applied")[0]["backup_path"] == promo["backup_path"]
    with pytest.raises(InputError, match=f"promotion {pid} is applied, not pending_review"):
        approve_promotion(None, pid, "bob", settings=settings, now=T0 + timedelta(hours=2))


def test_a_failing_reload_restores_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8)
    old_text = target.read_text()
    reload = [sys.executable, "-c", "import sys; sys.stderr.write('unit vllm not found\\n'); sys.exit(5)"]
    settings = configure(tmp_path, monkeypatch, {"target_config": str(target), "reload_command": reload})
    pid = _promotion(target, {GMU: 0.9})

    promo = approve_promotion(None, pid, "alice", settings=settings, now=T0)

    assert promo["status"] == "failed"
    assert promo["reason"] == f"reload command exited 5: unit vllm not found; {target} restored from the backup"
    assert target.read_text() == old_text


def test_reload_command_runs_after_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    target = tmp_path / "new" / "vllm.yaml"  # no file yet: created, no backup
    marker = tmp_path / "reloaded"
    reload = [sys.executable, "-c", f"import pathlib; pathlib.Path({str(marker)!r}).write_text(pathlib.Path({str(target)!r}).read_text())"]
    settings = configure(tmp_path, monkeypatch, {"target_config": str(target), "reload_command": reload})
    pid = _promotion(target, {GMU: 0.75})

    promo = approve_promotion(None, pid, "alice", settings=settings, now=T0)

    assert (promo["status"], promo["backup_path"]) == ("applied", None)
    assert yaml.safe_load(marker.read_text()) == {"vllm": {"gpu_memory_utilization": 0.75}}
    assert read_target_values(target) == {GMU: __import__("decimal").Decimal("0.75")}


def test_reject_and_its_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8)
    pid = _promotion(target, {GMU: 0.9})

    promo = reject_promotion(None, pid, "carol", "the canary ran on a quiet night", now=T0)

    assert (promo["status"], promo["decided_by"], promo["reason"]) == ("rejected", "carol", "the canary ran on a quiet night")
    assert yaml.safe_load(target.read_text())["vllm"]["gpu_memory_utilization"] == 0.8
    with pytest.raises(InputError, match=f"promotion {pid} is rejected, not pending_review"):
        reject_promotion(None, pid, "carol", now=T0)
    with pytest.raises(InputError, match="promotion 999 does not exist"):
        reject_promotion(None, 999, "carol", now=T0)


def test_expiry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    settings = configure(tmp_path, monkeypatch, {})
    early = _promotion(None, {GMU: 0.9}, expires=T0 + timedelta(hours=1))
    late = _promotion(None, {GMU: 0.85}, expires=T0 + timedelta(hours=24))

    assert expire_promotions(T0 + timedelta(minutes=59)) == []
    expired = expire_promotions(T0 + timedelta(hours=1))
    assert [(p["id"], p["status"], p["reason"]) for p in expired] == [(early, "expired", "not reviewed before it expired")]
    # a decision after the deadline is refused even before the expiry job ran
    with pytest.raises(InputError, match=f"promotion {late} expired at 2026-05-02 12:00 UTC"):
        approve_promotion(None, late, "alice", settings=settings, now=T0 + timedelta(hours=25))
    with session_scope(write=False) as session:
        statuses = {p["id"]: p["status"] for p in tq.list_promotions_detail(session)}
    assert statuses == {early: "expired", late: "pending_review"}


def test_a_caller_session_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    pid = _promotion(None, {GMU: 0.9})
    with session_scope() as session:
        promo = reject_promotion(session, pid, "dashboard:erin", "no", now=T0)
        assert promo["status"] == "rejected"
        session.rollback()  # the dashboard's transaction decides: rolled back, nothing happened
    with session_scope(write=False) as session:
        [row] = tq.list_promotions_detail(session)
    assert row["status"] == "pending_review"


def test_target_file_problems_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("vllm: [1, 2")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        read_target_values(bad)
    bad.write_text("vllm:\n  gpu_memory_utilization: lots\n")
    with pytest.raises(ConfigError, match="vllm.gpu_memory_utilization must be a number, got 'lots'"):
        read_target_values(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        write_target_values(bad, {GMU: 0.9}, "x")
    assert read_target_values(tmp_path / "missing.yaml") == {}
