"""Operational failures with a real worker process and a real SQLite file: another process holding an
exclusive lock, a full disk. One log line per failure, no tracebacks, and the worker records again
once the lock or the space is back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from healing.config import load_settings
from healing.images.registry import register_image
from healing.pixelrts import write_image
from storage.engine import dispose_engines
from storage.migrate import upgrade
from tests.conftest import selfheal_cmd, subprocess_env
from tests.images.conftest import flip_idat_byte
from tests.worker._procs import (
    checks,
    checks_done,
    heals,
    start_worker,
    stop_worker,
    tracebacks,
    wait_for,
    write_config,
)

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture()
def home(_isolated_home: Path) -> Path:
    upgrade()
    return _isolated_home


def make(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(os.urandom(20_000), path)
    return path


def test_exclusive_lock_during_worker_cycles_is_one_line_per_failure(home, tmp_path):
    images = [make(tmp_path / "imgs" / f"i{n}.rts.png") for n in range(2)]
    for path in images:
        register_image(path, settings=load_settings(), interval_s=1)
    config = write_config(tmp_path / "c.yaml", extra="database:\n  busy_timeout_ms: 300\n")
    log = tmp_path / "worker.log"
    proc = start_worker(home, config, log)
    try:
        assert wait_for(lambda: len(checks()) >= 2, 30), log.read_text()
        dispose_engines()
        holder = hold_lock(home / "selfheal.db", 4.0)
        locked_at = time.monotonic()
        holder.wait(timeout=30)
        unlocked = checks_done()  # unchanged healthy checks are counted in check_summaries, not stored as rows
        assert wait_for(lambda: checks_done() >= unlocked + 2, 15), log.read_text()  # later cycles are recorded
        assert proc.poll() is None
        took = stop_worker(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    failures = [line for line in text.splitlines() if "database is locked" in line]
    print(f"lock held {time.monotonic() - locked_at:.1f} s: {len(failures)} one-line failure(s), "
          f"{tracebacks(log)} traceback(s), SIGTERM stop {took:.2f} s")
    assert tracebacks(log) == 0, text
    assert failures, text
    assert all(line.count("database is locked") == 1 for line in failures)
    assert took < 10 and proc.returncode == 0


def test_worker_once_on_a_locked_database_prints_one_line_and_exits_3(home, tmp_path, monkeypatch):
    make_path = make(tmp_path / "imgs" / "a.rts.png")
    register_image(make_path, settings=load_settings())
    dispose_engines()
    holder = hold_lock(home / "selfheal.db", 5.0)
    try:
        out = subprocess.run([*selfheal_cmd(), "worker", "--once"], capture_output=True, text=True, timeout=60,
                             env=subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_DB_BUSY_TIMEOUT_MS="300"))
    finally:
        holder.wait(timeout=30)
    assert out.returncode == 3
    assert out.stdout == ""
    assert out.stderr == (f"selfheal: database is locked: another process held it for more than 300 ms "
                          f"(sqlite:///{home}/selfheal.db); raise database.busy_timeout_ms or find the stuck writer\n")


@pytest.fixture()
def small_tmpfs(tmp_path: Path):
    """A 6 MiB tmpfs (root only; skipped with the reason where mount is not permitted)."""
    mount = shutil.which("mount")
    target = tmp_path / "small"
    target.mkdir()
    if mount is None or os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a small tmpfs")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last block; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (65536, 512):
            try:
                while os.write(fd, b"\0" * block):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_disk_full_heal_and_worker_fail_in_one_line_and_recover(small_tmpfs, tmp_path, monkeypatch):
    home = small_tmpfs / "home"
    monkeypatch.setenv("SELFHEAL_HOME", str(home))
    upgrade()
    image = make(tmp_path / "imgs" / "kernel.rts.png")
    good = image.read_bytes()
    register_image(image, settings=load_settings(), interval_s=1)
    dispose_engines()
    filler = fill(small_tmpfs)
    flip_idat_byte(image)
    env = subprocess_env(SELFHEAL_HOME=str(home))
    out = subprocess.run([*selfheal_cmd(), "heal", str(image)], capture_output=True, text=True, timeout=60, env=env)
    print("heal on a full disk:", out.returncode, out.stderr.strip())
    assert out.returncode == 2
    assert out.stderr.startswith(f"selfheal: {image}: could not heal: ")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and "internal error" not in out.stderr
    assert "no space left on device" in out.stderr or "database or disk is full" in out.stderr
    assert image.read_bytes() != good  # untouched: nothing was restored without its quarantine copy and record

    # A running worker: the disk fills up under it while the image is damaged, then space returns.
    filler.unlink()
    image.write_bytes(good)
    config = write_config(tmp_path / "c.yaml", health_check={"auto_heal": "true"})
    log = tmp_path / "worker.log"
    proc = start_worker(home, config, log)
    try:
        assert wait_for(lambda: checks(), 30), log.read_text()
        dispose_engines()
        filler = fill(small_tmpfs)
        flip_idat_byte(image)
        time.sleep(4)  # several cycles on the full disk
        assert proc.poll() is None, log.read_text()
        filler.unlink()  # space is back: the next cycles record and heal
        assert wait_for(lambda: image.read_bytes() == good, 30), log.read_text()
        assert wait_for(lambda: [h for h in heals() if h["outcome"] == "healed"], 15)
        took = stop_worker(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    full = [line for line in text.splitlines() if "no space left on device" in line or "database or disk is full" in line]
    print(f"worker on a full disk: {len(full)} one-line failure(s), {tracebacks(log)} traceback(s); healed after space "
          f"returned; SIGTERM stop {took:.2f} s")
    assert tracebacks(log) == 0, text
    assert full, text
    assert [h["outcome"] for h in heals() if h["outcome"] == "started"] == []
    assert took < 10 and proc.returncode == 0
