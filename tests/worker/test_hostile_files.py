"""A real worker against registered images replaced by FIFOs, symlinks and devices; checks that overrun
health_check.timeout_s; SIGTERM in every state. Real processes, a real SQLite file."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from healing.config import load_settings
from healing.images.golden import sha256_file
from healing.images.registry import register_image
from healing.pixelrts import write_image
from storage.migrate import upgrade
from tests.conftest import selfheal_cmd, subprocess_env
from tests.images.conftest import flip_idat_byte
from tests.worker._procs import (
    alerts,
    checks,
    heals,
    start_worker,
    stop_worker,
    tracebacks,
    wait_for,
    write_config,
)

SECRET = b"root-only secret: do not copy me\n"


@pytest.fixture()
def home(_isolated_home: Path) -> Path:
    upgrade()
    return _isolated_home


def make(path: Path, size: int = 20_000, **kwargs: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(os.urandom(size), path, **kwargs)
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latest_check(path: Path) -> dict | None:
    mine = [c for c in checks() if c["image_path"] == str(path)]
    return mine[-1] if mine else None


def test_worker_reports_fifo_and_symlinks_as_security_findings_and_stops_on_sigterm(home, tmp_path):
    images = {n: make(tmp_path / "imgs" / f"{n}.rts.png") for n in ("fifo", "devzero", "secret", "fine")}
    for path in images.values():
        register_image(path, settings=load_settings(), interval_s=1)
    secret = tmp_path / "private" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    images["fifo"].unlink()
    os.mkfifo(images["fifo"])
    images["devzero"].unlink()
    images["devzero"].symlink_to("/dev/zero")
    images["secret"].unlink()
    images["secret"].symlink_to(secret)
    log = tmp_path / "worker.log"
    proc = start_worker(home, write_config(tmp_path / "c.yaml", health_check={"timeout_s": 5}), log)
    try:
        started = time.monotonic()
        got = wait_for(lambda: all(latest_check(p) for p in images.values()) and len(alerts()) >= 3, 30)
        assert got, log.read_text()
        seen_after = time.monotonic() - started
        descriptions = {n: latest_check(p)["findings"][0]["description"] for n, p in images.items() if n != "fine"}
        assert descriptions == {
            "fifo": f"{images['fifo']}: registered image was replaced by a FIFO, not a regular file",
            "devzero": f"{images['devzero']}: registered image was replaced by a symbolic link (to /dev/zero); "
                       "the link is not followed",
            "secret": f"{images['secret']}: registered image was replaced by a symbolic link (to {secret}); "
                      "the link is not followed",
        }
        for name in descriptions:
            check = latest_check(images[name])
            assert (check["status"], check["findings"][0]["category"], check["findings"][0]["severity"]) == (
                "critical", "security", "high")
            assert check["file_sha256"] is None  # nothing behind the entry was read
        assert latest_check(images["fine"])["status"] == "healthy"
        assert sorted((Path(a["subject"]).name, a["kind"], a["severity"]) for a in alerts()) == [
            ("devzero.rts.png", "image.security", "critical"), ("fifo.rts.png", "image.security", "critical"),
            ("secret.rts.png", "image.security", "critical")]
        # Later cycles keep checking (nothing blocked) and the worker idles instead of spinning.
        before = len(checks())
        cpu = cpu_seconds(proc.pid)
        time.sleep(2.0)
        assert proc.poll() is None
        busy = cpu_seconds(proc.pid) - cpu
        assert busy < 0.8, f"worker used {busy:.2f} s of CPU in 2 s idle"
        later = len(checks()) - before
        assert later >= 4  # every image checked again at its 1 s interval: no job is blocked
        assert len(alerts()) == 3  # one alert per replacement, not one per check
        took = stop_worker(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"security findings recorded {seen_after:.2f} s after start; idle CPU {busy:.2f} s/2 s; "
          f"{later} later check(s) ran; SIGTERM stop {took:.2f} s")
    assert took < 10 and proc.returncode == 0
    assert tracebacks(log) == 0, log.read_text()


def test_heal_quarantines_a_symlink_as_a_link_and_restores_a_regular_file(home, tmp_path):
    image = make(tmp_path / "imgs" / "kernel.rts.png")
    good = image.read_bytes()
    register_image(image, settings=load_settings())
    secret = tmp_path / "private" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    image.unlink()
    image.symlink_to(secret)
    out = subprocess.run([*selfheal_cmd(), "heal", str(image), "--json"], capture_output=True, text=True, timeout=60,
                         env=subprocess_env(SELFHEAL_HOME=str(home)))
    assert out.returncode == 0, out.stderr
    assert not image.is_symlink() and image.read_bytes() == good  # the link itself was replaced
    assert secret.read_bytes() == SECRET and stat.S_IMODE(secret.stat().st_mode) == 0o600  # target untouched
    qdir = load_settings().quarantine_dir
    entries = sorted(qdir.iterdir())
    assert [e.name[17:] for e in entries] == ["kernel.rts.png", "kernel.rts.png.meta.json"]  # after "<UTC stamp>-"
    assert entries[0].is_symlink() and os.readlink(entries[0]) == str(secret)
    assert stat.S_IMODE(entries[1].lstat().st_mode) == 0o400  # the (regular) sidecar: owner read-only
    assert stat.S_IMODE(qdir.stat().st_mode) == 0o700
    for path in load_settings().home.rglob("*"):  # no copy of the target's content anywhere in the home
        if path.is_file() and not path.is_symlink() and path.suffix != ".db" and "selfheal.db" not in path.name:
            assert SECRET not in path.read_bytes(), path
    restore = [h for h in heals() if h["action"] == "restore_golden"]
    assert [(h["outcome"], h["quarantine_path"]) for h in restore] == [("healed", str(entries[0]))]
    assert restore[0]["detail"]["found"] == "a symbolic link"


def test_heal_replaces_a_fifo_without_reading_it(home, tmp_path):
    image = make(tmp_path / "imgs" / "kernel.rts.png")
    good = image.read_bytes()
    register_image(image, settings=load_settings())
    image.unlink()
    os.mkfifo(image)
    started = time.monotonic()
    out = subprocess.run([*selfheal_cmd(), "heal", str(image)], capture_output=True, text=True, timeout=60,
                         env=subprocess_env(SELFHEAL_HOME=str(home)))
    assert (out.returncode, out.stderr) == (0, "")
    assert time.monotonic() - started < 10
    assert image.read_bytes() == good
    restore = [h for h in heals() if h["action"] == "restore_golden"]
    assert [(h["outcome"], h["quarantine_path"]) for h in restore] == [("healed", None)]
    assert restore[0]["detail"]["quarantine"] == f"not kept: {image}: is a FIFO; nothing to quarantine"


HANG = """
import time


def hang(result):
    # A custom healing action stuck on something external (a hung mount, an unanswered API).
    while True:
        time.sleep(0.05)
"""


def test_check_overrunning_timeout_is_unknown_with_an_alert_and_sigterm_still_stops(home, tmp_path):
    image = make(tmp_path / "imgs" / "kernel.rts.png")
    register_image(image, settings=load_settings(), interval_s=1)
    flip_idat_byte(image)
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "hangmod.py").write_text(HANG)
    config = write_config(tmp_path / "c.yaml", health_check={"timeout_s": 0.5, "auto_heal": "true"},
                          extra="healing:\n  actions: ['hangmod:hang']\n")
    log = tmp_path / "worker.log"
    proc = start_worker(home, config, log, PYTHONPATH=f"{tmp_path / 'mods'}{os.pathsep}{Path.cwd()}")
    try:
        def timed_out() -> list[dict]:
            return [c for c in checks() if c["findings"] and "did not finish within" in c["findings"][0]["description"]]

        got = wait_for(timed_out, 30)
        assert got, log.read_text()
        assert (got[0]["status"], got[0]["findings"][0]["category"]) == ("unknown", "performance")
        assert got[0]["findings"][0]["description"] == (
            f"{image}: check did not finish within health_check.timeout_s (0.5 s)")
        assert [(a["kind"], a["severity"]) for a in alerts() if a["kind"] == "image.check_timeout"] == [
            ("image.check_timeout", "warning")]
        # Later intervals record that the stuck check is still running, without new alerts, and the
        # other jobs (heartbeat) keep going.
        assert wait_for(lambda: any("still running" in (c["findings"] or [{}])[0].get("description", "")
                                    for c in checks()), 10)
        assert len([a for a in alerts() if a["kind"] == "image.check_timeout"]) == 1
        took = stop_worker(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"SIGTERM with a stuck check: stopped in {took:.2f} s")
    assert took < 10 and proc.returncode == 0
    assert tracebacks(log) == 0, log.read_text()
    assert "did not finish within 0.5 s" in log.read_text()


@pytest.mark.slow
def test_sigterm_stops_the_worker_within_10_s_in_every_state(home, tmp_path):
    """idle, mid-check (a large image being analysed), mid-heal (a large restore being written)."""
    big = make(tmp_path / "imgs" / "big.rts.png", size=24 << 20, compression_level=0)
    register_image(big, settings=load_settings())
    good = big.read_bytes()
    config = write_config(tmp_path / "c.yaml", health_check={"timeout_s": 60, "auto_heal": "true"})
    times = {}
    log = tmp_path / "worker.log"

    # idle: the first check is done, nothing runs
    proc = start_worker(home, config, log)
    assert wait_for(lambda: latest_check(big), 60), log.read_text()
    time.sleep(0.5)
    times["idle"] = stop_worker(proc)

    # mid-check: a changed but valid file is analysed afresh (about a second for 24 MiB); stop during it
    make(big, size=24 << 20, compression_level=0)
    changed = sha256_file(big)
    proc = start_worker(home, config, log)
    assert wait_for(lambda: _beat(proc.pid, "running"), 60), log.read_text()
    time.sleep(0.2)
    in_check = not any(c["file_sha256"] == changed for c in checks())
    times["mid-check"] = stop_worker(proc)

    # mid-heal: stop as the restore's temporary file appears next to the image
    flip_idat_byte(big)
    proc = start_worker(home, config, log)
    assert wait_for(lambda: any(p.name.startswith(".selfheal-restore-") for p in big.parent.iterdir()), 60, 0.002)
    times["mid-heal"] = stop_worker(proc)
    print("SIGTERM stop times:", {k: round(v, 2) for k, v in times.items()}, "(mid-check landed in a check:", in_check, ")")
    assert all(t < 10 for t in times.values()), times
    assert tracebacks(log) == 0, log.read_text()
    # Whatever the stop cut short is finished at the next start.
    out = subprocess.run([*selfheal_cmd(), "worker", "--once"], capture_output=True, text=True, timeout=120,
                         env=subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_CONFIG=str(config)))
    assert out.returncode == 0, out.stderr
    assert big.read_bytes() == good
    assert [h for h in heals() if h["outcome"] == "started"] == []


def _beat(pid: int, *states: str) -> bool:
    from storage import queries
    from storage.engine import session_scope

    with session_scope(write=False) as session:
        beat = queries.worker_heartbeat(session)
    return beat is not None and beat["pid"] == pid and beat["state"] in (states or ("starting", "running"))
