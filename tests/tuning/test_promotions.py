"""Promotions: approve (apply with backup, reload), reject, expire; errors are one line."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from healing.errors import ConfigError, InputError, SelfHealError
from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS
from healing.tuning.promotions import (
    approve_promotion,
    expire_promotions,
    read_target_values,
    reject_promotion,
    write_target_file,
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
    # the old nested form is migrated to vLLM's flat --config keys on this first apply
    assert target.read_text() == "served_model: demo\ngpu-memory-utilization: 0.9\nmax-num-seqs: 8\nmax-model-len: 4096\n"
    assert promo["backup_path"] == f"{target}.bak-20260501T130000-p{pid}"
    assert Path(promo["backup_path"]).read_text() == old_text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".vllm.yaml")] == []  # no temp file left
    assert [e["to"] for e in _events("promotion.approved")] == ["approved"]
    [applied] = _events("promotion.applied")
    assert applied["backup_path"] == promo["backup_path"]
    assert applied["migrated"] == (f"{target} moved from the nested 'vllm:' form to vLLM's flat --config keys "
                                   "(the backup keeps the old form)")
    assert applied["written_as"] == {GMU: "gpu-memory-utilization", MAX_NUM_SEQS: "max-num-seqs"}
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
    assert marker.read_text() == "gpu-memory-utilization: 0.75\n"
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


# --------------------------------------------------------------------------- vLLM's own --config YAML

VLLM_CONFIG = """\
# vLLM serve config, owned by ops (read with: vllm serve --config this.yaml)
model: meta-llama/Llama-3.1-8B-Instruct
served-model-name:
  - llama
  - chat   # alias for the old clients
host: 0.0.0.0
port: 8000
gpu_memory_utilization: 0.8   # tuned by selfheal
max-model-len: 32k
enable-prefix-caching: true
compilation-config:
    level: 3
    cudagraph_capture_sizes: [1, 2, 4]
api-key: "s3cr'et"
"""


def test_flat_vllm_config_round_trip_changes_only_the_value(tmp_path: Path) -> None:
    target = tmp_path / "vllm.yaml"
    target.write_text(VLLM_CONFIG)
    target.chmod(0o640)

    result = write_target_file(target, {GMU: 0.85, MAX_NUM_SEQS: 64}, "t1")

    # the changed value in place (the user's underscore spelling kept), the new key appended in dash spelling
    assert target.read_text() == VLLM_CONFIG.replace("gpu_memory_utilization: 0.8 ", "gpu_memory_utilization: 0.85 ") + "max-num-seqs: 64\n"
    assert (result.migrated, result.keys) == (False, {GMU: "gpu_memory_utilization", MAX_NUM_SEQS: "max-num-seqs"})
    assert result.backup == f"{target}.bak-t1" and Path(result.backup).read_bytes() == VLLM_CONFIG.encode()
    assert (target.stat().st_mode & 0o777, Path(result.backup).stat().st_mode & 0o777) == (0o640, 0o640)
    # vLLM reads max-model-len 32k as 32000 (human_readable_int), and so do we
    assert read_target_values(target) == {GMU: Decimal("0.85"), MAX_NUM_SEQS: Decimal(64), MAX_MODEL_LEN: Decimal(32000)}


def test_a_quoted_value_and_a_second_apply(tmp_path: Path) -> None:
    target = tmp_path / "vllm.yaml"
    target.write_text('max-num-seqs: "16"  # quoted\ngpu-memory-utilization: 0.9\n')
    write_target_file(target, {MAX_NUM_SEQS: 8}, "a")
    assert target.read_text() == "max-num-seqs: 8  # quoted\ngpu-memory-utilization: 0.9\n"
    write_target_file(target, {GMU: 0.95, MAX_NUM_SEQS: 12}, "b")
    assert target.read_text() == "max-num-seqs: 12  # quoted\ngpu-memory-utilization: 0.95\n"
    assert Path(f"{target}.bak-b").read_text() == "max-num-seqs: 8  # quoted\ngpu-memory-utilization: 0.9\n"


def test_nested_form_is_read_and_migrated_to_flat_keys(tmp_path: Path) -> None:
    target = tmp_path / "vllm.yaml"
    old = ("# managed by selfheal\nserved_model: demo\nvllm:\n  gpu_memory_utilization: 0.8\n  max_num_seqs: 16\n"
           "  tensor_parallel_size: 2\nport: 8000  # the API\n")
    target.write_text(old)
    assert read_target_values(target) == {GMU: Decimal("0.8"), MAX_NUM_SEQS: Decimal(16)}

    result = write_target_file(target, {GMU: 0.9}, "m")

    assert result.migrated is True
    assert target.read_text() == ("# managed by selfheal\nserved_model: demo\ngpu-memory-utilization: 0.9\nmax-num-seqs: 16\n"
                                  "tensor-parallel-size: 2\nport: 8000  # the API\n")
    assert Path(result.backup or "").read_text() == old
    assert read_target_values(target) == {GMU: Decimal("0.9"), MAX_NUM_SEQS: Decimal(16)}


def test_flat_key_wins_over_the_nested_one(tmp_path: Path) -> None:
    target = tmp_path / "vllm.yaml"
    target.write_text("gpu-memory-utilization: 0.7\nmax-model-len: auto\nvllm:\n  gpu_memory_utilization: 0.8\n  max_model_len: 4096\n")
    # what vLLM reads: the flat key; 'auto' is not a number we can use, so max_model_len stays unknown
    assert read_target_values(target) == {GMU: Decimal("0.7")}
    write_target_file(target, {MAX_NUM_SEQS: 4}, "w")
    assert target.read_text() == "gpu-memory-utilization: 0.7\nmax-model-len: auto\nmax-num-seqs: 4\n"


def test_a_symlinked_target_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.yaml"
    real.write_text("gpu-memory-utilization: 0.8\n")
    link = tmp_path / "vllm.yaml"
    link.symlink_to(real)
    with pytest.raises(SelfHealError, match="symbolic link"):
        write_target_file(link, {GMU: 0.9}, "s")
    assert real.read_text() == "gpu-memory-utilization: 0.8\n" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.yaml", "vllm.yaml"]  # no backup, no temp file
    # reading through it is harmless: the running values are still known
    assert read_target_values(link) == {GMU: Decimal("0.8")}
