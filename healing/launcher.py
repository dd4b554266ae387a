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
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
PORT = int(os.environ.get("SELFHEAL_DASHBOARD_PORT", "8501"))
API_PORT = int(os.environ.get("SELFHEAL_API_PORT", "8000"))


def _password(home: Path) -> tuple[str, str]:
    """The dashboard password and where the operator finds it (the banner prints only the latter)."""
    if os.environ.get("SELFHEAL_DASHBOARD_PASSWORD"):
        return os.environ["SELFHEAL_DASHBOARD_PASSWORD"], "you set in SELFHEAL_DASHBOARD_PASSWORD"
    path = home / "dashboard-password"
    if path.exists():
        return path.read_text().strip(), f"kept in {path} (cat it)"
    password = secrets.token_urlsafe(12)
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password, f"generated and kept in {path} (cat it; readable only by you)"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "healing", *args]


def _selfheal() -> str:
    """How to run the CLI of this installation, for the hints printed at start."""
    script = Path(sys.executable).parent / "selfheal"
    return str(script) if script.exists() else f"{sys.executable} -m healing"


def banner_lines(home: Path, where: str) -> list[str]:
    """What `make run` prints once everything started. The password itself is never printed (terminal
    scrollback, screen sharing and CI logs keep it): only where it is. The ``export`` line makes the CLI
    of another shell use this home (its default is ~/.selfheal, `make run`'s is ./.selfheal)."""
    cli = _selfheal()
    return [
        "",
        f"  dashboard: http://{HOST}:{PORT}",
        f"  log in with any operator name and the password {where}",
        f"  REST API:  http://{HOST}:{API_PORT} (docs /docs, metrics /metrics, health /health)",
        "  in another shell, first:",
        f"    export SELFHEAL_HOME={shlex.quote(str(home.resolve()))}",
        f"  worker:    running ({cli} daemon status shows its heartbeat)",
        f"  API token: {cli} api token create NAME --role viewer|operator (printed once)",
        "  Ctrl-C stops all three.",
        "",
    ]


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
        print("\n".join(banner_lines(home, where)))
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
