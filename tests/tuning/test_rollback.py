"""Manual rollback (`selfheal promotions rollback`): exit codes, JSON, audit; nothing silent while the
loop is blocked (cooldown, rate limit); migration 0005 keeps promotions and accepts rolled_back."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from healing import cli
from healing.tuning.actuators import GMU
from healing.tuning.promotions import approve_promotion, rollback_promotion
from storage import tuning_queries as tq
from storage.engine import session_scope
from storage.models import Alert, AuditEvent, TuningBlocked
from tests.tuning._orchestration import configure, db_url  # noqa: F401 - fixture

TARGET = "# ops\nmodel: demo\ngpu-memory-utilization: 0.8\n"
# one start of vLLM 0.33 that fails the same way every time (kv_cache_no_memory, fix: gmu 0.85)
FAILURE = ("(APIServer pid=7) INFO 05-01 12:00:00 [utils.py:96] non-default args: {'model': 'demo', "
           "'gpu_memory_utilization': 0.8, 'max_num_seqs': 16}\n"
           "(EngineCore_DP0 pid=8) ERROR 05-01 12:00:05 [core.py:700] ValueError: No available memory for the cache "
           "blocks. Try increasing `gpu_memory_utilization` when initializing the engine.\n")


@pytest.fixture(autouse=True)
def _commands(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = list(cli.COMMAND_MODULES)
    if "healing.tuning.orchestration_commands" not in modules:
        modules.append("healing.tuning.orchestration_commands")
    monkeypatch.setattr(cli, "COMMAND_MODULES", modules)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _applied(settings: Any, target: Path) -> int:
    with session_scope() as session:
        pid = int(tq.create_promotion(session, run_id=None, candidate_id=None, subsystem="vllm", old_values={GMU: 0.8},
                                      new_values={GMU: 0.9}, status="pending_review", reason="canary passed",
                                      expires_at=datetime.now(UTC) + timedelta(hours=1), target_file=str(target))["id"])
    assert approve_promotion(None, pid, "alice", settings=settings)["status"] == "applied"
    return pid


def _kinds() -> list[str]:
    from sqlmodel import select

    with session_scope(write=False) as session:
        return [e.kind for e in session.exec(select(AuditEvent).order_by(AuditEvent.seq)) if e.kind.startswith("promotion.")]


def _rows(model: Any) -> list[dict[str, Any]]:
    from sqlmodel import select

    with session_scope(write=False) as session:
        return [r.model_dump() for r in session.exec(select(model))]


def test_cli_rollback_restores_reloads_and_prints_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "vllm.yaml"
    target.write_text(TARGET)
    marker = tmp_path / "reloaded"
    reload = [sys.executable, "-c", "import pathlib, sys; p = pathlib.Path(sys.argv[2]); "
              "p.write_text((p.read_text() if p.exists() else '') + pathlib.Path(sys.argv[1]).read_text())",
              str(target), str(marker)]
    settings = configure(tmp_path, monkeypatch, {"target_config": str(target), "reload_command": reload, "verify_window_s": 0})
    pid = _applied(settings, target)
    assert target.read_text() == TARGET.replace("0.8", "0.9")

    code, out, err = _run(capsys, "promotions", "rollback", str(pid), "--reason", "latency doubled", "--actor", "bob", "--json")

    assert (code, err) == (0, "")
    promo = json.loads(out)
    assert (promo["id"], promo["status"], promo["reason"]) == (pid, "rolled_back", "latency doubled")
    assert promo["rollback"] == {"restored": str(target), "backup_path": promo["backup_path"], "reload_problem": None,
                                 "alert_id": None}
    assert target.read_bytes() == TARGET.encode()
    assert marker.read_text() == TARGET.replace("0.8", "0.9") + TARGET  # reloaded at the apply and at the rollback
    assert _kinds() == ["promotion.created", "promotion.approved", "promotion.applied", "promotion.file_restored",
                        "promotion.reload", "promotion.rolled_back"]
    assert _rows(Alert) == []  # a human's rollback that worked raises no alert
    code, out, _ = _run(capsys, "promotions", "list", "--status", "rolled_back", "--json")
    assert [r["id"] for r in json.loads(out)] == [pid]

    # rolled back already: exit 3, one line, nothing changes
    code, out, err = _run(capsys, "promotions", "rollback", str(pid))
    assert (code, out, err) == (3, "", f"selfheal: promotion {pid} is rolled_back, not applied\n")
    code, out, err = _run(capsys, "promotions", "rollback", "4242")
    assert (code, out, err) == (3, "", "selfheal: promotion 4242 does not exist\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["promotions", "rollback", "seven"])
    assert info.value.code == 64


def test_cli_rollback_with_a_failing_reload_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "vllm.yaml"
    target.write_text(TARGET)
    flag = tmp_path / "reload-fails"
    reload = [sys.executable, "-c", "import pathlib, sys; sys.exit(4 if pathlib.Path(sys.argv[1]).exists() else 0)", str(flag)]
    settings = configure(tmp_path, monkeypatch, {"target_config": str(target), "reload_command": reload, "verify_window_s": 0})
    pid = _applied(settings, target)
    flag.touch()

    code, out, err = _run(capsys, "promotions", "rollback", str(pid))

    assert (code, out) == (2, "")
    assert err == f"promotion {pid} rolled back: {target} restored, but reload command exited 4\n"
    assert target.read_bytes() == TARGET.encode()
    [alert] = _rows(Alert)
    assert (alert["kind"], alert["severity"], alert["reason"]) == ("tuning_rollback", "critical", "reload_failed")


def test_rollback_without_a_backup_removes_the_file_and_a_lost_backup_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    target = tmp_path / "new" / "vllm.yaml"  # did not exist before the apply
    settings = configure(tmp_path, monkeypatch, {"target_config": str(target), "verify_window_s": 0})
    pid = _applied(settings, target)
    assert target.read_text() == "gpu-memory-utilization: 0.9\n"
    promo = rollback_promotion(None, pid, "carol", settings=settings)
    assert (promo["status"], promo["reason"], target.exists()) == ("rolled_back", "rolled back by carol", False)

    other = tmp_path / "other.yaml"
    other.write_text(TARGET)
    settings = configure(tmp_path, monkeypatch, {"target_config": str(other), "verify_window_s": 0})
    pid = _applied(settings, other)
    with session_scope(write=False) as session:
        backup = next(p for p in tq.list_promotions_detail(session) if p["id"] == pid)["backup_path"]
    Path(backup).unlink()
    code, out, err = _run(capsys, "promotions", "rollback", str(pid))
    assert (code, out) == (2, "")
    assert err == f"selfheal: cannot roll back promotion {pid}: {backup}: no such file\n"
    assert other.read_text() == TARGET.replace("0.8", "0.9")  # nothing changed
    with session_scope(write=False) as session:
        assert next(p for p in tq.list_promotions_detail(session) if p["id"] == pid)["status"] == "applied"


def test_failures_while_rate_limited_are_stored_once_and_alerted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      db_url: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from healing.tuning.runner import process_pending_intents

    log = tmp_path / "vllm.log"
    log.write_text("")
    # the window is used up: no run may start for a day; the Observer's own cooldown is off
    settings = configure(tmp_path, monkeypatch, {"log_sources": [str(log)], "observer": {"cooldown_seconds": 0},
                                                 "rate_limits": {"max_runs": 0}})
    outcomes = []
    for _ in range(3):
        with log.open("a") as fh:
            fh.write(FAILURE)
        outcomes += [o["outcome"] for o in process_pending_intents(settings)["intents"]]

    assert outcomes == ["RATE_LIMITED"] * 3
    [blocked] = _rows(TuningBlocked)
    assert (blocked["subsystem"], blocked["error_class"], blocked["cause"], blocked["count"]) == (
        "vllm", "kv_cache_no_memory", "rate_limited", 3)
    [alert] = _rows(Alert)
    assert (alert["kind"], alert["severity"], alert["subject"], alert["id"]) == (
        "tuning_blocked", "warning", "vllm: kv_cache_no_memory", blocked["alert_id"])
    assert alert["message"].startswith("kv_cache_no_memory seen while tuning is rate limited: the tuning loop will not act on it until ")

    code, out, _ = _run(capsys, "tune", "status", "--json")
    [shown] = json.loads(out)["blocked"]
    assert (shown["error_class"], shown["cause"], shown["count"]) == ("kv_cache_no_memory", "rate_limited", 3)
    code, out, _ = _run(capsys, "tune", "status")
    assert "BLOCKED vllm: kv_cache_no_memory seen 3x while rate limited until " in out


def test_repeats_during_the_observer_cooldown_are_counted_not_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      db_url: str) -> None:  # noqa: F811
    from healing.tuning.runner import process_pending_intents

    log = tmp_path / "vllm.log"
    log.write_text(FAILURE)
    settings = configure(tmp_path, monkeypatch, {"log_sources": [str(log)], "observer": {"cooldown_seconds": 3600}})
    first = process_pending_intents(settings, observe=True)
    assert [o["action"] for o in first["observed"]] == ["intent"]
    for _ in range(2):  # the service keeps crashing the same way: two more restarts in the cooldown
        with log.open("a") as fh:
            fh.write(FAILURE)
        assert [o["action"] for o in process_pending_intents(settings)["observed"]] == ["suppressed"]

    [blocked] = _rows(TuningBlocked)
    assert (blocked["cause"], blocked["count"], blocked["error_class"]) == ("cooldown", 2, "kv_cache_no_memory")
    assert [a["kind"] for a in _rows(Alert)] == ["tuning_blocked"]


def test_migration_0005_keeps_promotions_and_allows_rolled_back(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from storage.engine import dispose_engines, get_engine
    from storage.migrate import HEAD_REVISION, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert upgrade(url, "0004") == "0004"
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("INSERT INTO promotions (subsystem, old_values, new_values, status, created_at) "
                             "VALUES ('vllm', '{}', '{\"vllm.gpu_memory_utilization\": 0.9}', 'applied', '2026-01-01 00:00:00')")
        with pytest.raises(sa.exc.IntegrityError):
            with conn.begin_nested():
                conn.exec_driver_sql("UPDATE promotions SET status = 'rolled_back'")
    assert upgrade(url) == HEAD_REVISION
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("UPDATE promotions SET status = 'rolled_back'")
        assert conn.exec_driver_sql("SELECT status, new_values FROM promotions").all() == [
            ("rolled_back", '{"vllm.gpu_memory_utilization": 0.9}')]
        with pytest.raises(sa.exc.IntegrityError):
            with conn.begin_nested():
                conn.exec_driver_sql("UPDATE promotions SET status = 'bogus'")
    from alembic import command

    from storage.migrate import alembic_config, current_revision

    with get_engine(url).connect() as conn:  # downgrade: a rolled_back promotion reads as failed in the old vocabulary
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
        conn.commit()
    assert current_revision(url) == "0004"
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("SELECT status FROM promotions").scalar_one() == "failed"
    dispose_engines()
