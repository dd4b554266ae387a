"""The register/heal/monitor/worker/daemon commands through a real subprocess, with exact exit codes."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from healing.pixelrts import write_image
from tests.conftest import selfheal_cmd, subprocess_env
from tests.images.conftest import flip_idat_byte


def run(*args, home, timeout=60, **env):
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(SELFHEAL_HOME=str(home), **env))


@pytest.fixture(params=["sqlite", "postgresql"])
def home(_isolated_home, request, monkeypatch):
    """SELFHEAL_HOME for the subprocesses; their database is SQLite under it, then a fresh, empty database
    on a real PostgreSQL server (skipped where none can be had) that the commands migrate themselves."""
    if request.param == "postgresql":
        monkeypatch.setenv("SELFHEAL_DATABASE_URL", request.getfixturevalue("postgres_server").fresh_database())
    return _isolated_home


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "imgs" / "kernel.rts.png"
    path.parent.mkdir()
    write_image(os.urandom(20_000), path)
    return path


def test_register_heal_monitor_exit_codes(home, image, tmp_path):
    good = image.read_bytes()
    out = run("register", str(image), "--critical", "--interval", "60", "--json", home=home)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["path"], data["critical"], data["interval_s"], data["changed"]) == (str(image), True, 60, False)

    out = run("monitor", str(image.parent), "--iterations", "1", "--interval", "0", home=home)
    assert out.returncode == 0 and out.stdout.startswith("[1/1] ") and " healthy " in out.stdout

    damaged = flip_idat_byte(image)
    out = run("monitor", str(image), "--iterations", "1", home=home)
    assert out.returncode == 2 and " critical " in out.stdout and image.read_bytes() == damaged

    out = run("heal", str(image), home=home)
    assert out.returncode == 0, out.stderr
    # parity (healing.parity_percent, default 2) rebuilds the flipped block before any golden copy is read
    assert out.stdout.startswith(f"{image}: healthy (repaired from parity: 1 damaged block(s) of 64 bytes rebuilt, sha256 ")
    assert image.read_bytes() == good
    quarantined = sorted(p.name for p in (home / "quarantine").iterdir())
    assert [n.split("-", 1)[1] for n in quarantined] == ["kernel.rts.png", "kernel.rts.png.meta.json"]
    assert (home / "quarantine" / quarantined[0]).read_bytes() == damaged

    out = run("heal", str(tmp_path / "unregistered.rts.png"), home=home)
    assert out.returncode == 2
    assert out.stderr.strip().endswith("could not heal: not registered: no golden copy to restore from")


def test_register_refusals_and_usage_errors(home, image, tmp_path):
    out = run("register", str(tmp_path / "missing.rts.png"), home=home)
    assert (out.returncode, out.stderr.strip()) == (3, f"selfheal: {tmp_path / 'missing.rts.png'}: no such file")
    notpng = tmp_path / "bad.rts.png"
    notpng.write_bytes(b"not a png")
    out = run("register", str(notpng), home=home)
    assert out.returncode == 3 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    out = run("register", str(image), "--interval", "0", home=home)
    assert out.returncode == 64
    flip_idat_byte(image)
    out = run("register", str(image), home=home)
    assert out.returncode == 2 and out.stderr.startswith("selfheal: ") and out.stderr.count("\n") == 1
    out = run("monitor", str(tmp_path / "empty-dir-does-not-exist"), "--iterations", "1", home=home)
    assert out.returncode == 3  # a missing path is unknown


def test_monitor_auto_heal_and_directory_expansion(home, image):
    good = image.read_bytes()
    assert run("register", str(image), home=home).returncode == 0
    other = image.parent / "other.rts.png"
    write_image(b"x" * 3000, other)  # unregistered: checked ad hoc
    (image.parent / "notes.txt").write_text("ignored")
    flip_idat_byte(image)
    out = run("monitor", str(image.parent), "--auto-heal", "--iterations", "2", "--interval", "0", home=home)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("[1/2] ") and lines[3].startswith("[2/2] ")
    assert " healed " in lines[0] and str(image) in lines[0] and " healthy " in lines[1]
    assert image.read_bytes() == good


def test_worker_once_and_second_worker(home, image):
    assert run("register", str(image), home=home).returncode == 0
    out = run("worker", "--once", "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["checked"] == 1
    assert out.stderr == ""  # no library chatter on stderr
    # hold the lock from another process: a second worker exits 3 with one line
    holder = subprocess.Popen(["python3", "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)",
                               str(home / "worker.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = run("worker", "--once", home=home)
        assert out.returncode == 3
        assert out.stderr.startswith("selfheal: another worker is already running for this database") and out.stderr.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_daemon_start_status_stop(home, image, tmp_path):
    config = tmp_path / "fast.yaml"
    config.write_text("worker:\n  heartbeat_interval: 0.5\n  poll_interval: 0.2\n  sync_interval: 0.5\n")
    assert run("register", str(image), home=home).returncode == 0
    assert run("daemon", "status", home=home).returncode == 3
    try:
        out = run("daemon", "start", "--config", str(config), home=home)  # the guide's order: --config after start
        assert out.returncode == 0 and out.stdout.startswith("worker started (pid "), out.stderr
        pid = int((home / "worker.pid").read_text())
        out = run("daemon", "status", home=home)
        assert out.returncode == 0 and out.stdout.startswith(f"worker running: pid {pid} ")
        assert run("worker", "--once", home=home).returncode == 3
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # its first check of the image lands in the database
            out = run("daemon", "status", home=home)
            if "1 image job(s)" in out.stdout:
                break
            time.sleep(0.3)
        assert "1 image job(s)" in out.stdout
    finally:
        out = run("daemon", "stop", home=home)
    assert out.returncode == 0 and out.stdout.strip() == f"worker stopped (pid {pid})"
    assert not (home / "worker.pid").exists()
    out = run("daemon", "status", home=home)
    assert out.returncode == 3 and "state stopped" in out.stdout
    assert run("daemon", "stop", home=home).stdout.strip() == "worker not running"


@pytest.mark.slow
def test_foreground_worker_stops_cleanly_on_sigterm(home, image):
    assert run("register", str(image), home=home).returncode == 0
    proc = subprocess.Popen([*selfheal_cmd(), "worker"], env=subprocess_env(SELFHEAL_HOME=str(home)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and run("daemon", "status", home=home).returncode != 0:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    status = run("daemon", "status", home=home)
    assert status.returncode == 3 and "state stopped" in status.stdout
    assert Path(home / "worker.lock").read_text() == ""  # pid cleared on release
