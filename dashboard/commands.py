"""CLI command of the dashboard: `selfheal dashboard [--host H] [--port P]`.

Only the standard library is imported at module level (the CLI must start fast). The command runs
``python -m streamlit run <package>/app.py`` in the foreground with the address, port, headless mode,
upload limit and usage-statistics opt-out given on the command line, so they hold whatever the
working directory (and its .streamlit/config.toml) is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from healing.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="start the operator dashboard (Streamlit)",
                       description="Start the Streamlit operator dashboard in the foreground. It listens on "
                                   f"{DEFAULT_HOST}:{DEFAULT_PORT} unless told otherwise; log in with the password from "
                                   "SELFHEAL_DASHBOARD_PASSWORD (or .streamlit/secrets.toml). "
                                   "SELFHEAL_DASHBOARD_AUTH=off disables the login on 127.0.0.1 only.")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_dashboard)


def app_path() -> Path:
    """dashboard/app.py of the installed (or checked-out) package."""
    import importlib.util

    spec = importlib.util.find_spec("dashboard")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the dashboard package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "app.py"


def streamlit_command(host: str, port: int, max_upload_mb: int) -> list[str]:
    """The argv that starts the dashboard (a list, never a shell string).

    Streamlit's transport accepts twice ``dashboard.max_upload_mb``: a file between the limit and twice
    it reaches the page, which refuses it with a visible error in place of the previous result (a
    file the browser itself refuses only gets a tooltip while the previous result stays on screen)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.maxUploadSize", str(2 * max_upload_mb), "--browser.gatherUsageStats", "false",
    ]


def cmd_dashboard(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if not args.host.strip():
        raise UsageError("--host must not be empty")
    from dashboard.config import dashboard_settings
    from healing.config import load_settings

    limits = dashboard_settings(load_settings())
    argv = streamlit_command(args.host, args.port, limits.max_upload_mb)
    root = app_path().parent.parent
    env = dict(os.environ)
    # The app imports healing/storage/dashboard; from a checkout they sit next to the package.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    # Replace this process with Streamlit, so that a signal to `selfheal dashboard` (Ctrl-C, SIGTERM
    # from make run or a supervisor) reaches the server itself and no orphan is left behind.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # not reached
