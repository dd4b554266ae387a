"""`selfheal api token create|list|revoke` (output, exit codes) and the ``api:`` config keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from healing import cli

TOKEN = re.compile(r"shk_[A-Za-z0-9_-]{43}")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_token_once_and_list_never_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "api", "token", "create", "ci-bot", "--role", "viewer")
    assert code == 0
    token = out.strip()
    assert TOKEN.fullmatch(token) and out == token + "\n"
    assert err.endswith("token 'ci-bot' (role viewer) created; it is shown only now, keep it safe:\n")
    code, out, err = _run(capsys, "api", "token", "list")
    assert code == 0 and token not in out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "STATE", "CREATED", "LAST", "USED"]
    assert lines[1].split()[:3] == ["ci-bot", "viewer", "active"] and lines[1].endswith(" never")
    code, out, _ = _run(capsys, "api", "token", "list", "--json")
    [row] = json.loads(out)
    assert set(row) == {"id", "name", "role", "created_at", "created_by", "last_used_at", "revoked_at", "revoked_by"}
    assert (row["name"], row["role"], row["revoked_at"]) == ("ci-bot", "viewer", None)
    assert token not in out


def test_revoke_duplicates_and_reuse_of_a_revoked_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "api", "token", "create", "ops", "--role", "operator", "--json")
    first = json.loads(out)
    assert code == 0 and (first["name"], first["role"]) == ("ops", "operator") and TOKEN.fullmatch(first["token"])
    code, out, err = _run(capsys, "api", "token", "create", "ops", "--role", "viewer")
    assert (code, out) == (3, "")
    assert err == "selfheal: a token named 'ops' exists already; revoke it first (selfheal api token revoke ops)\n"
    assert _run(capsys, "api", "token", "revoke", "ops")[:2] == (0, "token 'ops' revoked\n")
    code, _, err = _run(capsys, "api", "token", "revoke", "ops")
    assert code == 3 and err.startswith("selfheal: token 'ops' was revoked already at ")
    code, _, err = _run(capsys, "api", "token", "revoke", "nobody")
    assert (code, err) == (3, "selfheal: no token named 'nobody'\n")
    code, out, _ = _run(capsys, "api", "token", "create", "ops", "--role", "viewer")
    assert code == 0 and out.strip() != first["token"]
    code, out, _ = _run(capsys, "api", "token", "list", "--json")
    assert [(r["name"], r["role"], r["revoked_at"]) for r in json.loads(out)] == [("ops", "viewer", None)]


def test_usage_errors_exit_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "api", "token", "create", "x", "--role", "admin")[0] == 64
    code, _, err = _run(capsys, "api", "token", "create", "bad name", "--role", "viewer")
    assert code == 64 and "token name must be 1-64 characters" in err
    assert _run(capsys, "api", "token")[0] == 64
    code, _, err = _run(capsys, "api", "--port", "70000")
    assert (code, err) == (64, "selfheal: --port must be between 1 and 65535, got 70000\n")


def _client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: dict) -> TestClient:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": api}))
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    from healing.api.app import create_app

    return TestClient(create_app())


def test_health_and_metrics_can_be_closed_by_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    client = _client(tmp_path, monkeypatch, {"public_health": False, "public_metrics": False})
    for path in ("/health", "/metrics"):
        response = client.get(path)
        assert response.status_code == 401 and response.json()["error"].startswith("missing bearer token")
    _, token, _ = _run(capsys, "api", "token", "create", "prom", "--role", "viewer")
    headers = {"Authorization": f"Bearer {token.strip()}"}
    assert client.get("/health", headers=headers).json()["status"] == "healthy"
    assert "selfheal_scrape_database_ok 1.0" in client.get("/metrics", headers=headers).text


def test_bad_api_values_are_one_config_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from healing.api.settings import api_settings
    from healing.config import load_settings
    from healing.errors import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": {"max_batch_files": 0}}))
    with pytest.raises(ConfigError) as error:
        api_settings(load_settings(config))
    assert "api.max_batch_files must be ≥ 1, got 0" in str(error.value)
    config.write_text(yaml.safe_dump({"api": {"allowed_endpoints": ["http://user:pw@models.internal/v1"]}}))
    with pytest.raises(ConfigError) as error:
        api_settings(load_settings(config))
    assert "must not carry credentials" in str(error.value)


def test_a_port_in_use_is_one_line_and_exit_3(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "healing", "api", "--port", str(port)], capture_output=True, text=True,
                              timeout=120, env=subprocess_env(SELFHEAL_HOME=str(tmp_path / "home")))
    assert done.returncode == 3
    assert done.stderr.splitlines()[-1] == (f"selfheal: cannot serve on http://127.0.0.1:{port}: the address is in use "
                                            "or not available (see above)")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["uvicorn", "python -m"])
def test_the_guide_ways_of_starting_the_server(tmp_path: Path, how: str) -> None:
    import subprocess
    import sys
    import time

    import httpx

    from tests.api.conftest import free_port
    from tests.conftest import subprocess_env

    port = free_port()
    argv = ([sys.executable, "-m", "uvicorn", "healing.api.main:app", "--host", "127.0.0.1", "--port", str(port)]
            if how == "uvicorn" else [sys.executable, "-m", "healing.api.main", "--port", str(port)])
    proc = subprocess.Popen(argv, env=subprocess_env(SELFHEAL_HOME=str(tmp_path / "home")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert response.json()["status"] == "healthy"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == -15  # uvicorn stops gracefully, then re-raises the SIGTERM it caught
