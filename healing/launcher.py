"""`make run`: upgrade the schema, load the demo data, start the worker, the dashboard and the REST API,
stop all three on Ctrl-C.

Runs with the embedded SQLite default under $SELFHEAL_HOME (the Makefile points it at ./.selfheal).
The dashboard password is taken from SELFHEAL_DASHBOARD_PASSWORD, or generated once and kept in
$SELFHEAL_HOME/dashboard-password (mode 0600) so that it survives restarts. The API listens on
127.0.0.1:$SELFHEAL_API_PORT (default 8000); its tokens come from `selfheal api token create`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
PORT = int(os.environ.get("SELFHEAL_DASHBOARD_PORT", "8501"))
API_PORT = int(os.environ.get("SELFHEAL_API_PORT", "8000"))


def _password(home: Path) -> tuple[str, str]:
    if os.environ.get("SELFHEAL_DASHBOARD_PASSWORD"):
        return os.environ["SELFHEAL_DASHBOARD_PASSWORD"], "from SELFHEAL_DASHBOARD_PASSWORD"
    path = home / "dashboard-password"
    if path.exists():
        return path.read_text().strip(), f"kept in {path}"
    password = secrets.token_urlsafe(12)
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password, f"generated and kept in {path}"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "healing", *args]


def _selfheal() -> str:
    """How to run the CLI of this installation, for the hints printed at start."""
    script = Path(sys.executable).parent / "selfheal"
    return str(script) if script.exists() else f"{sys.executable} -m healing"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    from healing.config import load_settings
    from storage.migrate import upgrade

    settings = load_settings()
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    print(f"selfheal home: {home}")
    revision = upgrade()
    print(f"database schema at revision {revision}")
    demo = subprocess.run(_cli("demo"), check=False)
    if demo.returncode != 0:
        print("demo data could not be loaded (see above); starting anyway", file=sys.stderr)

    password, where = _password(home)
    env = dict(os.environ, SELFHEAL_DASHBOARD_PASSWORD=password)
    procs: list[subprocess.Popen[bytes]] = []
    # The children run in their own sessions (a terminal's Ctrl-C reaches only us), so every way of
    # stopping the launcher must stop them: SIGTERM (kill, make being stopped) and SIGHUP (the terminal
    # closed) take the same path as Ctrl-C.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        procs.append(subprocess.Popen(_cli("worker"), env=env, start_new_session=True))
        procs.append(subprocess.Popen(_cli("dashboard", "--host", HOST, "--port", str(PORT)), env=env, start_new_session=True))
        procs.append(subprocess.Popen(_cli("api", "--host", HOST, "--port", str(API_PORT)), env=env, start_new_session=True))
        print()
        print(f"  dashboard: http://{HOST}:{PORT}")
        print(f"  log in with any operator name and the password {password!r} ({where})")
        print(f"  REST API:  http://{HOST}:{API_PORT} (docs /docs, metrics /metrics, health /health)")
        print(f"  API token: SELFHEAL_HOME={home} {_selfheal()} api token create NAME --role viewer|operator "
              "(printed once)")
        print("  worker:    running (selfheal daemon status shows its heartbeat)")
        print("  Ctrl-C stops all three.")
        print()
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [p for p in procs if p.poll() is not None]
        for p in failed:
            print(f"process {' '.join(p.args[2:4])} exited with {p.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping worker, dashboard and API …")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
