"""`make run`'s launcher for real: schema, demo data, worker and dashboard up; every way of stopping it
(Ctrl-C's SIGINT, SIGTERM, a closed terminal's SIGHUP) stops all children (worker, dashboard, REST API)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from healing.tuning.canary import free_port
from storage.migrate import head_revision
from tests.conftest import subprocess_env


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_launcher_starts_worker_and_dashboard_and_any_stop_signal_stops_both(tmp_path: Path, signum: int) -> None:
    home, port, api_port = tmp_path / "home", free_port(), free_port()
    env = subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_DASHBOARD_PORT=str(port), SELFHEAL_API_PORT=str(api_port))
    env.pop("SELFHEAL_DASHBOARD_PASSWORD", None)
    out_path = tmp_path / "launcher.out"
    with out_path.open("wb") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "healing.launcher"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert launcher.poll() is None, out_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the dashboard never answered /_stcore/health:\n" + out_path.read_text())
        text = out_path.read_text()
        password = (home / "dashboard-password").read_text().strip()
        assert stat.S_IMODE((home / "dashboard-password").stat().st_mode) == 0o600
        assert f"database schema at revision {head_revision()}" in text
        assert "demo: done;" in text
        assert f"  dashboard: http://127.0.0.1:{port}\n" in text
        # the password is never printed, only where it is kept
        assert password not in text
        assert (f"  log in with any operator name and the password generated and kept in {home / 'dashboard-password'} "
                "(cat it; readable only by you)\n") in text
        children = _children(launcher.pid)
        assert len(children) == 3, children  # the worker, the dashboard and the API
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the API never answered /health:\n" + out_path.read_text()
                time.sleep(0.5)
        assert (health.status_code, health.json()["status"]) == (200, "healthy")
        assert f"  REST API:  http://127.0.0.1:{api_port} (docs /docs, metrics /metrics, health /health)\n" in text
        assert " api token create NAME --role viewer|operator (printed once)\n" in text
        [export] = [line.strip() for line in text.splitlines() if line.strip().startswith("export SELFHEAL_HOME=")]
        assert export == f"export SELFHEAL_HOME={home.resolve()}"
        # another shell: no SELFHEAL_HOME until the printed line is pasted, elsewhere as working directory
        other = {k: v for k, v in env.items() if k != "SELFHEAL_HOME"}
        status = subprocess.run(["bash", "-c", f'{export} && "$0" -m healing daemon status', sys.executable],
                                env=other, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and status.stdout.startswith("worker running: pid "), status.stdout + status.stderr

        os.kill(launcher.pid, signum)
        assert launcher.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)]
        assert "stopping worker, dashboard and API" in out_path.read_text()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=1)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in _children(launcher.pid):
            os.kill(pid, signal.SIGKILL)
