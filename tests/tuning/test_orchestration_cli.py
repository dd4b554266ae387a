"""`selfheal tune run|status` and `selfheal promotions list|approve|reject`: output, JSON, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from healing import cli
from healing.tuning.actuators import GMU
from storage import tuning_queries as tq
from storage.engine import session_scope
from storage.ratelimit import RateLimits, claim_run_slot
from tests.conftest import ROOT
from tests.tuning._orchestration import (  # noqa: F401
    TIGHT_FAILURE,
    configure,
    db_url,
    simulator_log,
    tight_tuning,
    write_target,
)


@pytest.fixture(autouse=True)
def _commands(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = [m for m in cli.COMMAND_MODULES]
    for name in ("healing.tuning.commands", "healing.tuning.orchestration_commands"):
        if name not in modules:
            modules.append(name)
    monkeypatch.setattr(cli, "COMMAND_MODULES", modules)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _pending(target: Path) -> int:
    with session_scope() as session:
        return int(tq.create_promotion(session, run_id=None, candidate_id=None, subsystem="vllm", old_values={GMU: 0.8},
                                       new_values={GMU: 0.9}, status="pending_review", reason="canary passed with score 0.9",
                                       expires_at=datetime.now(UTC) + timedelta(hours=1), target_file=str(target))["id"])


def test_tune_status_shows_runs_cooldown_backoff_and_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    configure(tmp_path, monkeypatch, {"rate_limits": {"cooldown_s": 3600}}, mode="prod")
    now = datetime.now(UTC)
    with session_scope() as session:
        claim_run_slot(session, "vllm", RateLimits(cooldown_s=3600), now - timedelta(minutes=30), mode="prod")

    code, out, _ = _run(capsys, "tune", "status", "--json")

    assert code == 0
    status = json.loads(out)
    assert status["mode"] == "prod" and status["limits"]["cooldown_s"] == 3600
    [vllm] = status["subsystems"]
    assert (vllm["subsystem"], vllm["runs_used"], vllm["max_runs"], vllm["allowed"]) == ("vllm", 1, 3, False)
    assert 1790 <= vllm["cooldown_left_s"] <= 1800
    code, out, _ = _run(capsys, "tune", "status")
    assert code == 0 and out.startswith("mode: prod   open intents: 0   pending promotions: 0\n")
    assert re.search(r"^vllm\s+1/3\s+(29m59s|30m00s)\s+0\s+0s\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC$", out, re.M)


def test_tune_run_processes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                 capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(TIGHT_FAILURE))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target), mode="disabled")

    code, out, _ = _run(capsys, "tune", "run")

    assert code == 0
    assert out.splitlines()[0] == "mode disabled: 1 new event(s) in the log sources, 1 intent(s) processed, 0 promotion(s) expired"
    assert out.splitlines()[1].startswith("  intent 1: HEALING_DISABLED — self-healing is disabled (mode=disabled)")
    code, out, _ = _run(capsys, "tune", "run", "--json")
    assert code == 0 and json.loads(out)["intents"] == []


def test_a_shell_string_template_fails_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    configure(tmp_path, monkeypatch, {"canary": {"command": "vllm serve demo --port {port}"}})
    code, out, err = _run(capsys, "tune", "run")
    assert code == 3 and out == ""
    assert err == ("selfheal: config: tuning.canary.command must be an argv list such as [\"vllm\", \"serve\", …], not a shell "
                   "string 'vllm serve demo --port {port}'\n")


def test_promotions_list_approve_reject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                        capsys: pytest.CaptureFixture[str]) -> None:
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8)
    configure(tmp_path, monkeypatch, {"target_config": str(target)})
    first, second = _pending(target), _pending(target)

    code, out, _ = _run(capsys, "promotions", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "SUBSYSTEM", "CHANGE", "EXPIRES", "NOTE"]
    assert lines[1].split()[:5] == [str(second), "pending_review", "vllm", "gpu_memory_utilization", "0.8→0.9"]

    code, out, _ = _run(capsys, "promotions", "approve", str(first), "--actor", "alice")
    assert code == 0 and out.startswith(f"promotion {first} applied to {target} (backup {target}.bak-")
    assert yaml.safe_load(target.read_text())["gpu-memory-utilization"] == 0.9  # migrated to the flat vLLM form

    code, out, err = _run(capsys, "promotions", "approve", str(first))
    assert (code, out, err) == (3, "", f"selfheal: promotion {first} is applied, not pending_review\n")

    code, out, _ = _run(capsys, "promotions", "reject", str(second), "--reason", "not tonight", "--actor", "bob")
    assert (code, out) == (0, f"promotion {second} rejected\n")
    code, out, _ = _run(capsys, "promotions", "list", "--json", "--status", "rejected")
    [row] = json.loads(out)
    assert (row["id"], row["decided_by"], row["reason"], row["inconclusive"]) == (second, "bob", "not tonight", False)

    code, _, err = _run(capsys, "promotions", "reject", "77")
    assert (code, err) == (3, "selfheal: promotion 77 does not exist\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["promotions", "approve", "seven"])
    assert info.value.code == 64
    # The actor goes into the audit trail: one printable line of at most 64 characters (PostgreSQL's column
    # is 255 wide and would refuse more; SQLite would have stored anything).
    for bad in ("a" * 65, "eve\nadmin", "   "):
        with pytest.raises(SystemExit) as info:
            cli.main(["promotions", "reject", str(second), "--actor", bad])
        assert info.value.code == 64
        assert "argument --actor: must be 1-64 printable characters on one line" in capsys.readouterr().err


def test_commands_module_imports_only_the_standard_library() -> None:
    probe = ("import sys, healing.tuning.commands, healing.tuning.orchestration_commands; "
             "print(sorted(m for m in ('sqlalchemy', 'sqlmodel', 'httpx', 'yaml', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"
