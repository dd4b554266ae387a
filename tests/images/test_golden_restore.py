import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from healing.images.golden import TMP_MARK, GoldenStore, sha256_file
from healing.images.healer import restore_from_golden
from healing.pixelrts import write_image
from tests.conftest import subprocess_env


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "imgs" / "kernel.rts.png"
    path.parent.mkdir()
    write_image(os.urandom(20_000), path)
    return path


def damage(path: Path) -> bytes:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))
    return bytes(raw)


def test_store_is_content_addressed_and_read_only(tmp_path, image):
    store = GoldenStore(tmp_path / "golden")
    ref = store.store(image)
    assert ref.sha256 == sha256_file(image)
    assert ref.path == tmp_path / "golden" / ref.sha256[:2] / f"{ref.sha256}.rts.png"
    assert ref.path.read_bytes() == image.read_bytes()
    assert oct(ref.path.stat().st_mode & 0o777) == "0o400"  # owner read-only, in private directories
    assert [oct(d.stat().st_mode & 0o777) for d in (ref.path.parent, store.root)] == ["0o700", "0o700"]
    assert ref.sidecar is not None and ref.sidecar_name == "kernel.rts.png.meta.json"
    assert store.store(image) == ref  # idempotent
    assert store.is_intact(ref)


def test_restore_quarantines_and_heals(tmp_path, image):
    store = GoldenStore(tmp_path / "golden")
    ref = store.store(image)
    good = image.read_bytes()
    damaged = damage(image)
    outcome = restore_from_golden(image, ref, store, quarantine_dir=tmp_path / "quarantine")
    assert outcome.healed, outcome.message
    assert image.read_bytes() == good
    q = Path(outcome.quarantine_path)
    assert q.parent == tmp_path / "quarantine" and q.name.endswith("-kernel.rts.png")
    assert q.read_bytes() == damaged
    assert outcome.after_sha256 == ref.sha256 and outcome.before_sha256 != ref.sha256


def test_restore_refuses_a_damaged_golden_copy(tmp_path, image):
    store = GoldenStore(tmp_path / "golden")
    ref = store.store(image)
    os.chmod(ref.path, 0o644)
    damage(ref.path)
    before = damage(image)
    outcome = restore_from_golden(image, ref, store, quarantine_dir=None)
    assert not outcome.healed and "golden copy" in outcome.message
    assert image.read_bytes() == before


def test_restore_recreates_a_deleted_image(tmp_path, image):
    store = GoldenStore(tmp_path / "golden")
    ref = store.store(image)
    good = image.read_bytes()
    image.unlink()
    outcome = restore_from_golden(image, ref, store, quarantine_dir=tmp_path / "q")
    assert outcome.healed and image.read_bytes() == good and outcome.quarantine_path is None


# Restores the golden copy, then puts the damaged version back (atomically, like real bit rot would
# not — but so that every kill lands either in a restore or between two), forever.
RESTORE_LOOP = """
import os, sys
from pathlib import Path
from healing.images.golden import GoldenStore
store = GoldenStore(sys.argv[1])
ref = store.ref(sys.argv[2], None)
target = Path(sys.argv[3])
damaged = Path(sys.argv[4]).read_bytes()
print("ready", flush=True)
while True:
    store.restore(ref, target)
    tmp = target.with_name(target.name + ".dmg")
    tmp.write_bytes(damaged)
    os.replace(tmp, target)
"""


@pytest.mark.slow
def test_kill_9_during_restores_never_leaves_a_partial_file(tmp_path):
    # A large image makes each restore take long enough to be killed mid-copy.
    target = tmp_path / "imgs" / "big.rts.png"
    target.parent.mkdir()
    write_image(os.urandom(8 << 20), target, compression_level=0)
    store = GoldenStore(tmp_path / "golden")
    ref = store.store(target)
    good = target.read_bytes()
    damaged_path = tmp_path / "damaged.bin"
    damaged_path.write_bytes(damage(target))
    golden_before = ref.path.read_bytes()
    for i in range(12):
        proc = subprocess.Popen([sys.executable, "-c", RESTORE_LOOP, str(store.root), ref.sha256, str(target), str(damaged_path)],
                                stdout=subprocess.PIPE, env=subprocess_env())
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.037 * i)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        current = target.read_bytes()
        assert current == good or current == damaged_path.read_bytes(), f"partial file after kill {i}"
    assert ref.path.read_bytes() == golden_before
    # the next restore cleans up temp files a killed run left behind
    store.restore(ref, target)
    assert target.read_bytes() == good
    assert not [p for p in target.parent.iterdir() if p.name.startswith(TMP_MARK)]
