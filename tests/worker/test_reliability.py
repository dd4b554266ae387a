"""Reliability at the worker level: kill -9 during restores, and readers racing the worker's writes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from healing.images.golden import TMP_MARK, sha256_file
from healing.pixelrts import write_image
from storage.audit import verify_chain
from storage.engine import dispose_engines, session_scope
from tests.conftest import selfheal_cmd, subprocess_env
from tests.images.conftest import flip_idat_byte


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_kill_9_worker_during_restores_never_leaves_a_partial_image(settings, tmp_path):
    from healing.images.registry import register_image

    image = tmp_path / "imgs" / "big.rts.png"
    image.parent.mkdir()
    write_image(os.urandom(6 << 20), image, compression_level=0)
    golden = Path(register_image(image, settings=settings)["image"]["golden_path"])
    good = image.read_bytes()
    golden_sha = sha256_file(golden)
    damaged = flip_idat_byte(image)
    dispose_engines()
    env = subprocess_env(SELFHEAL_HOME=str(settings.home), VLM_AUTO_HEAL="true")
    kills = mid_restore = 0
    # Delays after the restore's temporary file appears: mostly none (the kill lands during the copy), some
    # short ones so kills also land around the fsync and the rename. A fast machine finishes a restore in a
    # few milliseconds, so the loop goes on (up to 30 rounds) until five kills have landed mid-restore.
    delays = (0.0, 0.0, 0.001, 0.0, 0.004)
    for i in range(30):
        if image.read_bytes() == good:  # the previous worker finished its restore: damage it again
            tmp = image.with_name("redamage.tmp")
            tmp.write_bytes(damaged)
            os.replace(tmp, image)
        proc = subprocess.Popen([*selfheal_cmd(), "worker", "--once"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # The restore's temporary file in the image's directory marks the restore window: kill inside it.
        started = _wait_for(lambda proc=proc: proc.poll() is not None
                            or any(p.name.startswith(TMP_MARK + image.name) for p in image.parent.iterdir()), 60)
        if delays[i % len(delays)]:
            time.sleep(delays[i % len(delays)])
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += started
        proc.wait()
        current = image.read_bytes()
        assert current == good or current == damaged, f"partial image after kill {i}"
        leftovers = [p for p in image.parent.iterdir() if p.name.startswith(TMP_MARK)]
        mid_restore += bool(leftovers)
        for leftover in leftovers:  # the next restore would remove them too; the wait above must not see them
            leftover.unlink()
        assert sha256_file(golden) == golden_sha
        if i >= 9 and mid_restore >= 5:
            break
    # The kills really landed inside restores: they left the restore's temporary file behind.
    assert kills >= 5 and mid_restore >= 5, (kills, mid_restore)
    # A clean run afterwards heals the image and leaves no temporary files behind.
    out = subprocess.run([*selfheal_cmd(), "worker", "--once", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert image.read_bytes() == good
    assert not [p for p in image.parent.iterdir() if p.name.startswith(TMP_MARK)]
    with session_scope(write=False) as session:
        assert verify_chain(session).ok


WRITER = """
import sys, time
from healing.config import load_settings
from healing.images.service import ImageService
from storage import queries
from storage.engine import session_scope
service = ImageService(load_settings())
with session_scope(write=False) as s:
    ids = [r["id"] for r in queries.list_images_with_latest_status(s)]
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < deadline:
    for image_id in ids:
        service.check(image_id)
        n += 1
    with session_scope() as s:
        queries.beat_heartbeat(s, "writer", pid=1, host="h")
print(n, flush=True)
"""


@pytest.mark.slow
def test_dashboard_reads_while_the_worker_writes(settings, make_image):
    from healing.images.registry import register_image
    from storage import queries

    ids = [register_image(make_image(f"i{n}.rts.png", size=3000), settings=settings)["image"]["id"] for n in range(5)]
    dispose_engines()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(SELFHEAL_HOME=str(settings.home)))
    assert writer.stdout.readline().strip() == "ready"
    reads = 0
    while writer.poll() is None:
        with session_scope(write=False) as session:
            queries.list_images_with_latest_status(session)
            queries.fleet_summary(session)
            queries.check_history(session, ids[0])
            queries.audit_page(session, limit=20)
            queries.recent_alerts(session)
            queries.worker_heartbeat(session)
        reads += 1
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    assert "database is locked" not in err
    writes = int(out.strip())
    assert writes > 50 and reads > 50
    with session_scope(write=False) as session:
        assert len(queries.check_history(session, ids[0], limit=100_000)) >= writes // 5
