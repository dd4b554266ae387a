"""End to end: the simulator (vLLM 0.33 mode) is the production service, started from the target file as
`vllm serve --config`; a promotion is applied, the restarted service dies of a CUDA OOM inside the window,
and `selfheal tune watch --wait` rolls it back: old bytes, reload (restart) ran, service healthy again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from healing.tuning.actuators import GMU
from healing.tuning.promotions import approve_promotion
from storage import tuning_queries as tq
from storage.engine import session_scope
from storage.models import Alert
from tests.conftest import ROOT
from tests.tuning._orchestration import configure, db_url, tight_tuning  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

TARGET = "# production vLLM, read with: vllm serve --config vllm.yaml\nmodel: demo\ngpu-memory-utilization: 0.8\nmax-num-seqs: 16\n"

# The restart script the reload command runs: stop the running service, start it again from the target
# file (extra simulator flags after the fifth argument). The promoted value (``fail_value``) stands for
# a config that starts but dies under load: the simulator's --sim-fail-after makes the engine die of a
# CUDA OOM 1.5 s after it serves.
RESTART = """\
import os, pathlib, signal, subprocess, sys, time
target, log, pidfile, port, fail_value = sys.argv[1:6]
pid = pathlib.Path(pidfile)
if pid.exists():
    try:
        os.killpg(int(pid.read_text()), signal.SIGTERM)
    except ProcessLookupError:
        pass
    time.sleep(0.3)
argv = [sys.executable, "-m", "healing.tuning.simulator", "--config", target, "--host", "127.0.0.1", "--port", port,
        "--startup-delay", "0.2", "--sim-watchdog-interval", "0.5", *sys.argv[6:]]
if f"gpu-memory-utilization: {fail_value}" in pathlib.Path(target).read_text():
    argv += ["--sim-fail-after", "1.5"]
with open(log, "a") as out:
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
pid.write_text(str(proc.pid))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def test_a_promotion_whose_service_dies_in_the_window_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     db_url: str) -> None:  # noqa: F811
    port = _free_port()
    target, log, pidfile = tmp_path / "vllm.yaml", tmp_path / "vllm.log", tmp_path / "vllm.pid"
    target.write_text(TARGET)
    script = tmp_path / "restart.py"
    script.write_text(RESTART)
    reload = [sys.executable, str(script), str(target), str(log), str(pidfile), str(port), "0.85"]
    health = f"http://127.0.0.1:{port}/health"
    settings = configure(tmp_path, monkeypatch, {
        "target_config": str(target), "reload_command": reload, "verify_window_s": 60,
        "log_sources": [{"path": str(log), "subsystem": "vllm"}],
        "watch": {"poll_s": 0.3, "health_url": health, "metrics_url": f"http://127.0.0.1:{port}/metrics",
                  "unhealthy_probes": 2, "start_timeout_s": 30},
    }, mode="dev")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(reload, check=True, env=env, cwd=ROOT, timeout=30)  # production starts
    try:
        assert _healthy(health, 30), log.read_text()[-2000:]
        with session_scope() as session:
            pid = int(tq.create_promotion(session, run_id=None, candidate_id=None, subsystem="vllm", old_values={GMU: 0.8},
                                          new_values={GMU: 0.85}, status="pending_review", reason="canary passed",
                                          expires_at=datetime.now(UTC) + timedelta(hours=1), target_file=str(target))["id"])
        monkeypatch.chdir(ROOT)
        promo = approve_promotion(None, pid, "tuning (dev mode)", settings=settings)
        assert promo["status"] == "applied" and "gpu-memory-utilization: 0.85" in target.read_text()

        started = time.monotonic()
        watch = subprocess.run([sys.executable, "-m", "healing", "tune", "watch", "--wait", "--json"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started

        assert watch.returncode == 2, watch.stderr
        [result] = json.loads(watch.stdout)
        assert (result["promotion_id"], result["state"]) == (pid, "rolled_back")
        assert result["reason"].startswith(f"cuda_oom_torch in {log}: "), result["reason"]
        assert "CUDA out of memory" in result["reason"]
        assert target.read_bytes() == TARGET.encode()
        with session_scope(write=False) as session:
            row = next(p for p in tq.list_promotions_detail(session) if p["id"] == pid)
        assert (row["status"], row["reason"]) == ("rolled_back", f"watch failed: {result['reason']}")
        with session_scope(write=False) as session:
            assert [(a.kind, a.severity) for a in session.exec(select(Alert))] == [("tuning_rollback", "critical")]
        # the reload after the restore started the old config again: healthy, and it stays up
        assert _healthy(health, 30)
        time.sleep(2.0)
        assert httpx.get(health, timeout=2).status_code == 200
        print(f"rolled back {took:.1f} s after the watch started")
    finally:
        if pidfile.exists():
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def _wait_for_start_failure(log: Path, start: int) -> None:
    """Until the ``start``-th start of the service in the log has failed (and its traceback is written)."""
    deadline = time.monotonic() + 30
    while True:
        text = log.read_text() if log.exists() else ""
        starts = text.split("non-default args")
        if len(starts) > start and "No available memory for the cache blocks" in starts[start]:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.1)
    time.sleep(0.5)


def test_dev_mode_heals_then_the_watch_rolls_back_and_the_blocked_loop_is_not_silent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    """The whole loop in dev mode: production (the "tight" card) fails at gmu 0.8 → intent → canary → 0.9
    applied and production restarted → it dies in the window → rolled back to 0.8 → the old failure is
    back, inside the Observer cooldown: stored and alerted once, shown by tune status."""
    from healing.tuning.runner import process_pending_intents

    port = _free_port()
    target, log, pidfile = tmp_path / "vllm.yaml", tmp_path / "vllm.log", tmp_path / "vllm.pid"
    old = "# production\nmodel: demo\ngpu-memory-utilization: 0.8\nmax-num-seqs: 16\nmax-model-len: 4096\n"
    target.write_text(old)
    script = tmp_path / "restart.py"
    script.write_text(RESTART)
    reload = [sys.executable, str(script), str(target), str(log), str(pidfile), str(port), "0.9", "--profile", "tight"]
    health = f"http://127.0.0.1:{port}/health"
    monkeypatch.chdir(ROOT)
    section = tight_tuning(tmp_path, log, target, reload_command=reload, verify_window_s=60,
                           watch={"poll_s": 0.3, "health_url": health, "unhealthy_probes": 2, "start_timeout_s": 30})
    settings = configure(tmp_path, monkeypatch, section, mode="dev")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # with SELFHEAL_CONFIG: the CLI sees the same configuration
    subprocess.run(reload, check=True, env=env, cwd=ROOT, timeout=30)  # production starts at 0.8 and fails
    try:
        _wait_for_start_failure(log, 1)

        cycle = process_pending_intents(settings)
        [outcome] = cycle["intents"]
        assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "applied"), outcome
        pid = outcome["promotion_id"]
        assert "gpu-memory-utilization: 0.9\n" in target.read_text()

        watch = subprocess.run([sys.executable, "-m", "healing", "tune", "watch", "--wait", "--json"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        assert watch.returncode == 2, watch.stderr
        [result] = json.loads(watch.stdout)
        assert (result["promotion_id"], result["state"]) == (pid, "rolled_back")
        assert result["reason"].startswith(f"cuda_oom_torch in {log}: "), result["reason"]
        assert result["reload_problem"] is None, result
        assert target.read_bytes() == old.encode()

        # back at 0.8 the service fails to start again (its third start): the same failure inside the cooldown
        _wait_for_start_failure(log, 3)
        again = process_pending_intents(settings)
        assert [o["action"] for o in again["observed"]] == ["suppressed"] and again["intents"] == [], again
        status = subprocess.run([sys.executable, "-m", "healing", "tune", "status"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert "BLOCKED vllm: kv_cache_no_memory seen 1x during the Observer cooldown until " in status.stdout, status.stdout
        with session_scope(write=False) as session:
            alerts = [(a.kind, a.severity) for a in session.exec(select(Alert).order_by(Alert.id))]
        assert alerts == [("tuning_rollback", "critical"), ("tuning_blocked", "warning")]
    finally:
        if pidfile.exists():
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
