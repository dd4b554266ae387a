"""Shared fixtures: every test gets its own SELFHEAL_HOME so nothing touches ~/.selfheal."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("selfheal-home")
    monkeypatch.setenv("SELFHEAL_HOME", str(home))
    for var in ("SELFHEAL_CONFIG", "SELFHEAL_DATABASE_URL", "SELFHEAL_MODE", "KLR_SELF_HEALING_MODE",
                "VLM_MODEL_PROVIDER", "VLM_MODEL_ENDPOINT", "VLM_MODEL_NAME", "VLM_AUTO_HEAL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(autouse=True)
def _keep_main_module() -> object:
    """Streamlit's AppTest runs page scripts as ``__main__`` and leaves that module in sys.modules;
    a later test that spawns processes would then make every child re-run a dashboard page."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def selfheal_cmd() -> list[str]:
    """argv prefix that runs the CLI of this checkout in a subprocess."""
    return [sys.executable, "-m", "healing"]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server for the session (see tests/pg_server.py); skips where none can be had."""
    from tests import pg_server

    reason = pg_server.why_unavailable()
    if reason:
        pytest.skip(f"no PostgreSQL: {reason}")
    server = pg_server.start_server()
    try:
        running = next(server)
    except pg_server.StartFailed as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    yield running
    server.close()  # stops the server and removes its files


@pytest.fixture
def pg_url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    """A fresh, migrated PostgreSQL database on the session's server."""
    from storage.migrate import upgrade

    url = postgres_server.fresh_database()
    upgrade(url)
    return url
