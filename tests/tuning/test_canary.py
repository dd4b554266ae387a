"""The canary process: readiness by log line or health URL, probe against the simulator, clean group stop."""

from __future__ import annotations

import os
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, default_settings
from healing.tuning.canary import free_port, run_canary
from healing.tuning.runner_config import parse_runner_settings
from tests.tuning._orchestration import canary_command

SETTINGS = default_settings()
VALUES = {GMU: Decimal("0.9"), MAX_NUM_SEQS: Decimal(16), MAX_MODEL_LEN: Decimal(4096)}

# A stubborn service: starts a grandchild, says READY, ignores SIGTERM; it must still be gone afterwards.
STUBBORN = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(f"PIDS {os.getpid()} {child.pid}", flush=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("READY gmu=" + sys.argv[1], flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_log_readiness_and_sigkill_of_the_whole_group(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    canary = parse_runner_settings({"canary": {
        "command": ["{python}", str(script), "{vllm.gpu_memory_utilization}"], "health_url": None,
        "ready_log_regex": r"^READY gmu=0\.9$", "start_timeout_s": 10, "stop_grace_s": 0.5,
        "probe": {"requests": 2, "timeout_s": 1}}}).canary

    result = run_canary(canary, VALUES, SETTINGS, tmp_path / "logs", "stubborn")

    assert result.gates == {"started": True, "healthy": True, "no_memory_error": True, "probe_passed": False}
    assert result.metrics["errors"] == 2 and result.metrics["latency_p95_ms"] is None
    assert result.reason == "probe failed: 2 of 2 requests failed; killed with SIGKILL after 0.5 s"
    pids = [int(p) for p in result.log_excerpt.splitlines()[0].split()[1:]]
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)  # the grandchild went with the group


def test_not_ready_in_time_and_exit_before_ready(tmp_path: Path) -> None:
    canary = parse_runner_settings({"canary": {
        "command": ["{python}", "-c", "import time; time.sleep(30)", "{port}"], "start_timeout_s": 0.5, "stop_grace_s": 2}}).canary
    slow = run_canary(canary, VALUES, SETTINGS, tmp_path, "slow")
    assert slow.gates == {"started": True, "healthy": False, "no_memory_error": True, "probe_passed": False}
    assert slow.reason.startswith("not ready within 0.5 s; stopped by SIGTERM")

    canary = parse_runner_settings({"canary": {"command": ["{python}", "-c", "import sys; sys.exit(4)", "{port}"]}}).canary
    gone = run_canary(canary, VALUES, SETTINGS, tmp_path, "gone")
    assert gone.gates["started"] is False and gone.reason == "the canary exited with status 4 before it was ready; exited with status 4"

    missing = parse_runner_settings({"canary": {"command": [str(tmp_path / "no-such-binary"), "{port}"]}}).canary
    nothing = run_canary(missing, VALUES, SETTINGS, tmp_path, "missing")
    assert not any(nothing.gates.values()) and nothing.reason.startswith("cannot start ")


def test_simulator_canary_probe_metrics(tmp_path: Path) -> None:
    canary = parse_runner_settings({"canary": {"command": canary_command("tight"), "start_timeout_s": 20,
                                               "probe": {"requests": 6, "concurrency": 3, "max_tokens": 8}}}).canary

    result = run_canary(canary, VALUES, SETTINGS, tmp_path, "sim")

    assert result.passed, result.reason
    m = result.metrics
    assert (m["requests"], m["errors"], m["error_rate"]) == (6, 0, 0.0)
    assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"] < 5000
    assert m["throughput_tps"] > 0
    # the log of the simulator tells the KV cache: 0.68 GiB → 5520 tokens, 1.35 requests of 4096 at once
    assert (m["kv_cache_toks"], m["max_concurrency"], m["kv_headroom"]) == (5520, 1.35, 0.0844)
    assert "Starting vLLM API server 0 on http://127.0.0.1:" in Path(result.log_path).read_text()


def test_free_ports_differ() -> None:
    ports = {free_port() for _ in range(5)}
    assert len(ports) >= 2 and all(1024 <= p <= 65535 for p in ports)


@pytest.mark.skipif(sys.platform != "linux", reason="process groups as on Linux")
def test_canary_log_memory_error_fails_the_gate(tmp_path: Path) -> None:
    # the simulator at gmu 0.8 on the tight card fails to start with "No available memory for the cache blocks"
    canary = parse_runner_settings({"canary": {"command": canary_command("tight"), "start_timeout_s": 20}}).canary
    result = run_canary(canary, {**VALUES, GMU: Decimal("0.8")}, SETTINGS, tmp_path, "oom")
    assert result.gates == {"started": False, "healthy": False, "no_memory_error": False, "probe_passed": False}
    assert [e["class"] for e in result.events] == ["kv_cache_no_memory"]
    assert result.reason.startswith("memory error in the canary log: kv_cache_no_memory (line ")
