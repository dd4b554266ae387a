"""`selfheal tune observe` and `selfheal simulate vllm` through the real CLI framework."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import healing.cli as cli

A_MSG = "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    if "healing.tuning.commands" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "healing.tuning.commands"])


def write_log(tmp_path: Path) -> Path:
    log = tmp_path / "vllm.log"
    log.write_text("\n".join([
        "(APIServer pid=1) INFO 11-23 10:20:32 [api_server.py:1896] vLLM API server version 0.10.2",
        "(EngineCore_DP0 pid=2) INFO 11-23 10:20:36 [gpu_worker.py:276] Available KV cache memory: -1.13 GiB",
        '(EngineCore_DP0 pid=2) ERROR 11-23 10:20:40 [core.py:718]     raise ValueError("No available memory for the cache blocks. "',
        "(EngineCore_DP0 pid=2) ERROR 11-23 10:20:40 [core.py:718] ValueError: " + A_MSG,
        "(EngineCore_DP0 pid=2) ValueError: " + A_MSG,
    ]) + "\n")
    return log


def test_observe_json_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path)
    rc = cli.main(["tune", "observe", str(log), "--json", "--current", "vllm.gpu_memory_utilization=0.6",
                   "--gpu-total-gib", "12"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, list) and len(doc) == 1
    e = doc[0]
    assert e["class"] == "kv_cache_no_memory" and e["line"] == 4 and e["escalate"] is False
    assert e["seed_fix"] == {"vllm.gpu_memory_utilization": 0.7}
    assert e["values"] == {"gpu_memory_utilization": 0.6, "deficit_gib": 1.13, "total_gib": 12,
                           "target_gpu_memory_utilization": 0.6946}
    assert e["version"] == "0.10.2" and e["subsystem"] == "vllm"
    assert "1.13" in e["reason"]


def test_observe_table_and_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path)
    assert cli.main(["tune", "observe", str(log), "--current", "gmu=0.6", "--gpu-total-gib", "12"]) == 0
    out = capsys.readouterr().out
    assert "kv_cache_no_memory" in out and "vllm.gpu_memory_utilization=0.7" in out and "0.10.2" in out
    empty = tmp_path / "ok.log"
    empty.write_text("INFO 04-30 10:20:36 [core.py:1] GPU KV cache size: 1,000 tokens\n")
    assert cli.main(["tune", "observe", str(empty)]) == 0
    assert capsys.readouterr().out.strip() == f"{empty}: no failures found"
    assert cli.main(["tune", "observe", str(empty), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("argv, code, message", [
    (["--current", "gmu"], 64, "selfheal: tune observe: --current: expected PARAM=VALUE, got 'gmu'"),
    (["--current", "vllm.dtype=1"], 64, "selfheal: tune observe: --current: unknown parameter 'vllm.dtype'"),
    (["--current", "max_num_seqs=abc"], 64, "selfheal: tune observe: --current: vllm.max_num_seqs must be a number, got 'abc'"),
    (["--gpu-total-gib", "0"], 64, "selfheal: tune observe: --gpu-total-gib must be > 0"),
])
def test_observe_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str) -> None:
    assert cli.main(["tune", "observe", str(write_log(tmp_path)), *argv]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_observe_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tune", "observe", str(tmp_path / "missing.log")]) == 3
    assert capsys.readouterr().err.strip() == f"selfheal: log file not found: {tmp_path / 'missing.log'}"
    assert cli.main(["tune", "observe", str(tmp_path)]) == 3


def test_observe_bad_tuning_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "selfheal.yaml"
    cfg.write_text("tuning:\n  observer:\n    free_memory_margin: lots\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(cfg))
    assert cli.main(["tune", "observe", str(write_log(tmp_path))]) == 3
    assert capsys.readouterr().err.strip() == "selfheal: config: tuning.observer.free_memory_margin must be a number, got 'lots'"


def test_missing_argument_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["tune", "observe"])
    assert info.value.code == 64


def test_simulate_vllm_failure_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["simulate", "vllm", "Qwen/Qwen2.5-1.5B-Instruct", "--profile", "seed", "--gpu-memory-utilization", "0.6",
                   "--startup-delay", "0", "--log-format", "0.10"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "Free memory on device (6.07/12.0 GiB)" in captured.out
    assert "RuntimeError: Engine core initialization failed." in captured.err
