"""`selfheal dashboard`: argument parsing, the streamlit argv, stdlib-only module import."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard import commands
from healing.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub)
    return parser.parse_args(["dashboard", *argv])


def test_defaults_and_options() -> None:
    args = _parse()
    assert (args.host, args.port, args.func) == ("127.0.0.1", 8501, commands.cmd_dashboard)
    args = _parse("--host", "0.0.0.0", "--port", "9000")
    assert (args.host, args.port) == ("0.0.0.0", 9000)


def test_streamlit_argv() -> None:
    argv = commands.streamlit_command("127.0.0.1", 8600, 25)
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(argv[4]) == ROOT / "dashboard" / "app.py"
    assert argv[5:] == ["--server.address", "127.0.0.1", "--server.port", "8600", "--server.headless", "true",
                        "--server.maxUploadSize", "50", "--browser.gatherUsageStats", "false"]


def test_bad_port_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--port must be between 1 and 65535, got 70000"):
        commands.cmd_dashboard(_parse("--port", "70000"))


def test_module_imports_only_the_standard_library() -> None:
    code = ("import sys; import dashboard.commands; "
            "heavy = [m for m in ('streamlit', 'numpy', 'pandas', 'sqlalchemy', 'plotly') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
