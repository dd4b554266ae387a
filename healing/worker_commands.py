"""CLI commands of the worker: `selfheal worker [--once]` and `selfheal daemon start|status|stop`.

`daemon start` runs `selfheal worker` in the background (its own session, output appended to
$SELFHEAL_HOME/worker.log, pid in $SELFHEAL_HOME/worker.pid) and waits until its heartbeat appears.
`daemon status` reads the heartbeat: exit 0 running, 3 not running. `daemon stop` sends SIGTERM,
waits for the clean shutdown, and falls back to SIGKILL after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from healing.errors import EXIT_OK, EXIT_UNKNOWN, SelfHealError
from healing.procs import pid_alive

PID_NAME = "worker.pid"
LOG_NAME = "worker.log"
STALE_BEATS = 3  # a heartbeat older than this many intervals means the worker is gone


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run the scheduler: periodic checks, healing, requests, heartbeat",
                       description="Run the worker in the foreground (one per database; Ctrl-C or SIGTERM stops it). "
                                   "--once checks every registered image now, processes pending requests and exits.")
    p.add_argument("--once", action="store_true", help="one full cycle, then exit (tests, cron)")
    p.add_argument("--json", action="store_true", help="with --once: print the cycle summary as JSON")
    p.add_argument("--node", type=_node_name, metavar="NAME",
                   help="the node this worker checks images for on a shared database (default worker.node, else the host name)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("daemon", help="run the worker in the background: start, status, stop",
                       description="start: background worker with a pid file under $SELFHEAL_HOME; "
                                   "status: exit 0 running, 3 not running; stop: SIGTERM, then SIGKILL after --timeout.")
    p.add_argument("action", choices=["start", "status", "stop"])
    p.add_argument("--timeout", type=float, default=20.0, metavar="S", help="seconds to wait for start-up or shutdown (default 20)")
    p.set_defaults(func=cmd_daemon)


def _node_name(text: str) -> str:
    from storage.nodes import check_node_name

    try:
        return check_node_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from healing.worker import Worker, configure_logging

    worker = Worker(node=getattr(args, "node", None))
    configure_logging(worker.settings)
    if not args.once:
        code = worker.run_forever()
        if worker.abandoned_threads:
            # A stuck check thread would keep the interpreter from exiting (job threads are joined at exit);
            # the lock and the heartbeat are already released, so leave without waiting for it.
            logging.shutdown()
            sys.stdout.flush()
            os._exit(code)
        return code
    summary = worker.run_once()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"checked {summary['checked']} image(s): {summary['healthy']} healthy, {summary['warning']} warning, "
              f"{summary['critical']} critical, {summary['unknown']} unknown ({summary['reused']} unchanged); "
              f"healed {summary['healed']}, could not heal {summary['heal_failed']}; requests {summary['requests']}")
    return EXIT_OK


def _home() -> Path:
    from healing.config import load_settings

    return load_settings().home


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_worker(pid: int) -> bool:
    """Guard against pid reuse: the process must be a selfheal worker (where /proc tells)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)
    return b"worker" in argv and any(b"healing" in a or b"selfheal" in a for a in argv)


def _heartbeat() -> dict[str, Any] | None:
    """The newest heartbeat of a worker on this host, else of any worker (on a shared database the
    other nodes' workers beat too)."""
    import socket
    from datetime import UTC, datetime

    from sqlmodel import select

    from storage import queries
    from storage.engine import session_scope
    from storage.models import WorkerHeartbeat

    try:
        with session_scope(write=False) as session:
            mine = session.exec(select(WorkerHeartbeat).where(WorkerHeartbeat.host == socket.gethostname())
                                .order_by(WorkerHeartbeat.last_beat.desc()).limit(1)).first()
            if mine is None:
                return queries.worker_heartbeat(session)
            return {**mine.model_dump(), "age_s": max(0.0, (datetime.now(UTC) - mine.last_beat).total_seconds())}
    except SelfHealError:
        raise
    except Exception:  # no schema yet: no worker ever ran against this database
        return None


def _running(beat: dict[str, Any] | None) -> bool:
    if beat is None or beat["state"] not in ("starting", "running"):
        return False
    interval = float((beat.get("info") or {}).get("heartbeat_interval") or 10.0)
    if beat["age_s"] > STALE_BEATS * interval + 5:
        return False
    import socket

    return beat["host"] != socket.gethostname() or pid_alive(int(beat["pid"]))


def cmd_daemon(args: argparse.Namespace) -> int:
    home = _home()
    return {"start": _start, "status": _status, "stop": _stop}[args.action](home, args.timeout)


def _start(home: Path, timeout: float) -> int:
    from healing.worker import wait_for_heartbeat
    from storage.migrate import upgrade

    home.mkdir(parents=True, exist_ok=True)
    pid_file, log_file = home / PID_NAME, home / LOG_NAME
    pid = _read_pid(pid_file)
    if pid is not None and pid_alive(pid) and _is_worker(pid):
        print(f"worker already running (pid {pid})")
        return EXIT_OK
    upgrade()
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "healing", "worker"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise SelfHealError(f"worker did not start: {_last_line(log_file) or f'exit code {proc.returncode}'} (log: {log_file})")
        if wait_for_heartbeat(proc.pid, 0.5) is not None:
            print(f"worker started (pid {proc.pid}, log {log_file})")
            return EXIT_OK
    raise SelfHealError(f"worker (pid {proc.pid}) did not report a heartbeat within {timeout:g} s (log: {log_file})")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _status(home: Path, _timeout: float) -> int:
    beat = _heartbeat()
    if _running(beat):
        assert beat is not None
        info = beat.get("info") or {}
        jobs = info.get("jobs")
        role = f", node {info['node']} ({info['role']})" if info.get("node") and info.get("role") else ""
        print(f"worker running: pid {beat['pid']} on {beat['host']}, state {beat['state']}, last heartbeat "
              f"{beat['age_s']:.1f} s ago" + (f", {jobs} image job(s)" if jobs is not None else "") + role)
        return EXIT_OK
    if beat is None:
        print("worker not running (no heartbeat recorded)")
    else:
        print(f"worker not running (last heartbeat {beat['age_s']:.0f} s ago, state {beat['state']}, pid {beat['pid']})")
    return EXIT_UNKNOWN


def _stop(home: Path, timeout: float) -> int:
    import socket

    pid_file = home / PID_NAME
    pid = _read_pid(pid_file)
    if pid is None:
        beat = _heartbeat()
        if _running(beat) and beat is not None and beat["host"] == socket.gethostname():
            pid = int(beat["pid"])
    if pid is None or not pid_alive(pid) or not _is_worker(pid):
        pid_file.unlink(missing_ok=True)
        print("worker not running")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    forced = pid_alive(pid)
    if forced:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print(f"worker stopped (pid {pid}{', killed after timeout' if forced else ''})")
    return EXIT_OK
