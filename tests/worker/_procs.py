"""Helpers for tests that run a real `selfheal worker` process against a real SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import select

from storage.engine import dispose_engines, session_scope
from storage.models import Alert, Check, Heal
from tests.conftest import selfheal_cmd, subprocess_env

FAST_WORKER = {"poll_interval": 0.2, "heartbeat_interval": 0.5, "sync_interval": 0.5}


def write_config(path: Path, *, worker: dict[str, Any] | None = None, health_check: dict[str, Any] | None = None,
                 extra: str = "") -> Path:
    """A YAML config with a fast worker; ``extra`` is appended verbatim."""
    lines = ["worker:"] + [f"  {k}: {v}" for k, v in {**FAST_WORKER, **(worker or {})}.items()]
    if health_check:
        lines += ["health_check:"] + [f"  {k}: {v}" for k, v in health_check.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def start_worker(home: Path, config: Path, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`selfheal worker` in the background, stdout and stderr appended to ``log``."""
    dispose_engines()  # the child must not inherit pooled connections
    with open(log, "ab") as out:
        return subprocess.Popen([*selfheal_cmd(), "worker", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_CONFIG=str(config), **env))


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> float:
    """Send ``sig`` and return the seconds until the process exited (it is killed after ``timeout``)."""
    start = time.monotonic()
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.monotonic() - start


def rows(model: Any) -> list[dict[str, Any]]:
    with session_scope(write=False) as session:
        return [r.model_dump() for r in session.exec(select(model).order_by(model.id))]


def checks() -> list[dict[str, Any]]:
    return rows(Check)


def checks_done() -> int:
    """Every check the worker made: the stored rows plus the unchanged checks only counted in
    check_summaries (storage.retention.record_unchanged; its sampled ones are also rows)."""
    from storage.models import CheckSummary

    with session_scope(write=False) as session:
        summaries = session.exec(select(CheckSummary)).all()
        return len(session.exec(select(Check.id)).all()) + sum(s.unchanged_checks - s.sampled_checks for s in summaries)


def heals() -> list[dict[str, Any]]:
    return rows(Heal)


def alerts() -> list[dict[str, Any]]:
    return rows(Alert)


def tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback")
