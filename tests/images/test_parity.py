"""Erasure-coded parity (issue 14): layout, exact damaged-block lists, byte-exact repair, refusal beyond
capacity, damage to the parity itself, and the heal order parity → golden copy → escalate."""

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlmodel import select

from healing.errors import InputError
from healing.images import parity as P
from healing.images.registry import register_image
from healing.images.service import ImageService
from healing.pixelrts import write_image
from healing.safeio import WriteError
from storage.engine import session_scope
from storage.models import Heal
from tests.conftest import selfheal_cmd, subprocess_env


def heal_rows(image_id=None):
    with session_scope(write=False) as session:
        query = select(Heal).order_by(Heal.id)
        if image_id is not None:
            query = query.where(Heal.image_id == image_id)
        return [(h.action, h.outcome) for h in session.exec(query).all()]


def mutate(data: bytes, start: int, length: int) -> bytes:
    """``data`` with ``length`` bytes from ``start`` changed (every byte really differs)."""
    raw = bytearray(data)
    for i in range(start, min(start + length, len(raw))):
        raw[i] ^= 0xA5
    return bytes(raw)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize(("length", "expected"), [
    (4096, (64, 64, 1, 1, 64, 1)),
    (100_000, (256, 196, 4, 2, 2048, 1793)),
    (1 << 20, (4096, 128, 3, 2, 24576, 20481)),
    (64 << 20, (4096, 249, 5, 66, 1351680, 1347585)),
])
def test_layout_and_the_burst_it_buys(length, expected):
    layout = P.choose_layout(length, 2)
    assert (layout.block_size, layout.k, layout.r, layout.groups, layout.parity_bytes,
            layout.recoverable_burst_bytes) == expected
    assert layout.k + layout.r <= 256
    assert layout.k * layout.groups >= layout.n_blocks > (layout.k - 1) * layout.groups


def test_percent_sets_the_overhead():
    assert P.choose_layout(64 << 20, 5).capacity()["parity_percent"] == 4.98
    assert P.choose_layout(64 << 20, 1).capacity()["parity_percent"] == 1.19
    assert P.choose_layout(64 << 20, 10).r == 23
    with pytest.raises(InputError, match=r"must be in \(0, 100\]"):
        P.choose_layout(1000, 0)
    with pytest.raises(InputError, match="empty file"):
        P.choose_layout(0, 2)


# ----------------------------------------------------------------------------- repair in memory


@pytest.fixture(scope="module")
def mib() -> tuple[bytes, P.Parity]:
    data = random.Random(7).randbytes(1 << 20)
    return data, P.parse(P.encode(data, 2))


def test_intact_file_has_no_damaged_blocks(mib):
    data, parity = mib
    d = P.diagnose(data, parity)
    assert (d.file_intact, d.parity_intact, d.damaged_blocks, d.repairable) == (True, True, [], False)
    assert P.repair(data, parity) is data


def test_a_burst_at_capacity_is_rebuilt_byte_for_byte(mib):
    data, parity = mib
    burst = parity.layout.recoverable_burst_bytes  # 20481 bytes: any alignment, here the worst one
    damaged = mutate(data, 4095, burst)
    d = P.diagnose(damaged, parity)
    assert d.damaged_blocks == [0, 1, 2, 3, 4, 5]  # bytes 4095 … 24575: one byte of block 0, all of 5
    assert d.damaged_ranges() == [[0, 24576]]
    assert d.repairable and d.overfull_groups == []
    assert P.repair(damaged, parity) == data


def test_one_block_more_than_capacity_is_refused(mib):
    data, parity = mib
    damaged = mutate(data, 4096, 7 * 4096)  # 7 consecutive blocks: group 1 loses 4 > r = 3
    d = P.diagnose(damaged, parity)
    assert d.damaged_blocks == [1, 2, 3, 4, 5, 6, 7]
    assert (d.repairable, d.overfull_groups) == (False, [1])
    with pytest.raises(P.RepairRefused, match="1 group\\(s\\) lost more than 3 shares"):
        P.repair(damaged, parity)


def test_scattered_blocks_within_each_group(mib):
    data, parity = mib
    blocks = [0, 2, 100, 1, 51, 255]  # three in group 0, three in group 1
    damaged = data
    for b in blocks:
        damaged = mutate(damaged, b * 4096 + 17, 1)
    assert P.diagnose(damaged, parity).damaged_blocks == sorted(blocks)
    assert P.repair(damaged, parity) == data
    damaged = mutate(damaged, 4 * 4096, 1)  # a fourth in group 0
    assert P.diagnose(damaged, parity).overfull_groups == [0]
    with pytest.raises(P.RepairRefused):
        P.repair(damaged, parity)


def test_truncation_makes_the_tail_blocks_erasures(mib):
    data, parity = mib
    cut = data[:len(data) - 3 * 4096 - 10]  # the last four blocks are gone or cut short
    d = P.diagnose(cut, parity)
    assert (d.file_length, d.expected_length, d.damaged_blocks) == (len(cut), 1 << 20, [252, 253, 254, 255])
    assert P.repair(cut, parity) == data
    assert P.diagnose(data[:100_000], parity).repairable is False


def test_bytes_appended_are_cut_off(mib):
    data, parity = mib
    d = P.diagnose(data + b"junk", parity)
    assert (d.damaged_blocks, d.file_intact, d.repairable) == ([], False, True)
    assert P.repair(data + b"junk", parity) == data


def test_damaged_parity_shards_are_erasures_too(mib):
    data, parity_mib = mib
    raw = bytearray(P.encode(data, 2))
    raw[raw.index(parity_mib.shards[3]) + 5] ^= 1  # shard 3: group 1, parity 0
    parity = P.parse(bytes(raw))
    assert parity.damaged_shards == [3] and parity.header_copies_ok == 2
    damaged = mutate(data, 4096, 2 * 4096 + 1)  # blocks 1, 2, 3: groups 1, 0, 1
    d = P.diagnose(damaged, parity)
    assert (d.damaged_blocks, d.damaged_shards, d.repairable) == ([1, 2, 3], [3], True)
    assert P.repair(damaged, parity) == data
    worse = mutate(damaged, 5 * 4096, 1)  # group 1 now: blocks 1, 3, 5 and shard 3 = 4 > r
    assert P.diagnose(worse, parity).overfull_groups == [1]
    with pytest.raises(P.RepairRefused):
        P.repair(worse, parity)


def test_one_damaged_header_copy_is_survived_two_are_detected(mib):
    data, _ = mib
    raw = P.encode(data, 2)
    first = bytearray(raw)
    first[40] ^= 0xFF
    parity = P.parse(bytes(first))
    assert (parity.header_copies_ok, parity.damaged_shards) == (1, [])
    assert P.repair(mutate(data, 0, 100), parity) == data
    last = bytearray(raw)
    last[-100] ^= 0xFF
    assert P.parse(bytes(last)).header_copies_ok == 1
    both = bytearray(first)
    both[-100] ^= 0xFF
    with pytest.raises(P.ParityError, match="both header copies fail their sha256"):
        P.parse(bytes(both))
    with pytest.raises(P.ParityError, match="both header copies"):
        P.parse(raw[:1000])


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 300_000), percent=st.sampled_from([1, 2, 5, 20]), seed=st.integers(0, 2**32 - 1))
def test_any_damage_within_capacity_is_repaired_exactly(size, percent, seed):
    rng = random.Random(seed)
    data = rng.randbytes(size)
    parity = P.parse(P.encode(data, percent))
    layout = parity.layout
    raw = bytearray(data)
    lost = []
    for group in range(layout.groups):
        members = layout.blocks_of(group)
        for block in rng.sample(members, rng.randint(0, min(layout.r, len(members)))):
            start = block * layout.block_size
            end = min(start + layout.block_size, size)
            pos = rng.randrange(start, end)
            raw[pos] ^= rng.randint(1, 255)
            lost.append(block)
    d = P.diagnose(bytes(raw), parity)
    assert d.damaged_blocks == sorted(lost)
    assert P.repair(bytes(raw), parity) == data


# ----------------------------------------------------------------------------- files and registration


def test_write_parity_refuses_a_symlink_and_writes_owner_read_only(tmp_path):
    target = tmp_path / "x.parity"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    target.symlink_to(victim)
    with pytest.raises(WriteError, match="is a symbolic link; refusing to write there"):
        P.write_parity(b"abc" * 1000, target, 2)
    assert victim.read_bytes() == b"keep"
    target.unlink()
    parity = P.write_parity(b"abc" * 1000, target, 2)
    assert oct(target.stat().st_mode & 0o777) == "0o400"
    assert parity.file_sha256 == hashlib.sha256(b"abc" * 1000).hexdigest()


@pytest.fixture()
def registered(settings, make_image):
    image = make_image(size=200_000)
    out = register_image(image, settings=settings)
    return image, image.read_bytes(), out


def test_register_makes_parity_beside_the_golden_copy(settings, registered):
    image, good, out = registered
    sha = out["golden_sha256"]
    path = settings.golden_dir / sha[:2] / f"{sha}.parity"
    parity = P.load(path)
    assert (parity.file_sha256, parity.layout.file_length, parity.percent) == (sha, len(good), 2.0)
    summary = out["image"]["baseline"]["parity"]
    assert (summary["path"], summary["percent"], summary["parity_bytes"]) == (str(path), 2.0, parity.layout.parity_bytes)
    status = P.parity_status(out["image"], golden_dir=settings.golden_dir)
    assert status["present"] is True and status["last_verified"] is None
    assert status["recoverable_burst_bytes"] == parity.layout.recoverable_burst_bytes
    assert status["overhead_percent"] == round(100 * path.stat().st_size / len(good), 3)
    assert P.parity_status({"golden_sha256": None}, golden_dir=settings.golden_dir)["present"] is False


def test_parity_percent_zero_makes_none(settings, make_image):
    settings.healing.parity_percent = 0
    out = register_image(make_image(), settings=settings)
    assert out["image"]["baseline"]["parity"] is None
    assert list(settings.golden_dir.rglob("*.parity")) == []


def _delete_golden(out):
    golden = Path(out["image"]["golden_path"])
    golden.chmod(0o600)
    golden.unlink()


def test_heal_repairs_from_parity_without_a_golden_copy(settings, registered):
    image, good, out = registered
    _delete_golden(out)
    damaged = mutate(good, 5000, 900)
    image.write_bytes(damaged)
    report = ImageService(settings).heal(str(image))
    assert (report.healthy, report.action) == (True, "repair_parity")
    assert report.message.startswith("repaired from parity: ")
    assert image.read_bytes() == good
    assert Path(report.quarantine_path).read_bytes() == damaged
    assert heal_rows(out["image"]["id"]) == [("repair_parity", "healed")]
    assert P.parity_status(out["image"], golden_dir=settings.golden_dir)["last_verified"] is not None


def test_damage_beyond_parity_falls_back_to_golden(settings, registered):
    image, good, out = registered
    damaged = mutate(good, 0, 50_000)
    image.write_bytes(damaged)
    report = ImageService(settings).heal(str(image))
    assert (report.healthy, report.action) == (True, "restore_golden")
    assert image.read_bytes() == good
    assert heal_rows(out["image"]["id"]) == [("repair_parity", "failed"), ("restore_golden", "healed")]
    with session_scope(write=False) as session:
        refused = session.exec(select(Heal).where(Heal.action == "repair_parity")).one()
        assert refused.quarantine_path is None  # refused before anything was touched
        assert refused.detail["message"].startswith("parity cannot repair: damage exceeds the parity")


def test_beyond_parity_and_no_golden_escalates(settings, registered):
    image, good, out = registered
    settings.healing.max_heal_attempts = 1
    _delete_golden(out)
    damaged = mutate(good, 0, 50_000)
    image.write_bytes(damaged)
    report = ImageService(settings).heal(str(image))
    assert (report.healthy, report.escalated) == (False, True)
    assert image.read_bytes() == damaged  # an unverifiable repair is never written
    assert heal_rows(out["image"]["id"]) == [("repair_parity", "failed"), ("restore_golden", "failed"),
                                             ("escalate", "escalated")]


def test_damaged_parity_file_falls_back_to_golden(settings, registered):
    image, good, out = registered
    sha = out["golden_sha256"]
    path = settings.golden_dir / sha[:2] / f"{sha}.parity"
    raw = bytearray(path.read_bytes())
    raw[40] ^= 1
    raw[-100] ^= 1
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    image.write_bytes(mutate(good, 100, 10))
    report = ImageService(settings).heal(str(image))
    assert (report.healthy, report.action) == (True, "restore_golden")
    with session_scope(write=False) as session:
        refused = session.exec(select(Heal).where(Heal.action == "repair_parity")).one()
        assert refused.detail["message"] == "parity not usable: parity file is damaged: both header copies fail their sha256"


# ----------------------------------------------------------------------------- the real CLI


def run(home, *args):
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, timeout=120,
                          env=subprocess_env(SELFHEAL_HOME=str(home)))


@pytest.mark.slow
def test_cli_register_corrupt_heal_by_parity(tmp_path, _isolated_home):
    image = tmp_path / "k.rts.png"
    write_image(random.Random(3).randbytes(300_000), image)
    good = image.read_bytes()
    out = run(_isolated_home, "register", str(image), "--json")
    assert out.returncode == 0, out.stderr
    sha = json.loads(out.stdout)["golden_sha256"]
    golden = _isolated_home / "golden" / sha[:2] / f"{sha}.rts.png"
    golden.chmod(0o600)
    golden.unlink()
    image.write_bytes(mutate(good, 1000, 3000))  # blocks of 1024 bytes: 0..3
    out = run(_isolated_home, "parity", "verify", str(image), "--json")
    assert out.returncode == 2, out.stderr
    verdict = json.loads(out.stdout)
    assert (verdict["status"], verdict["damaged_blocks"], verdict["damaged_ranges"]) == ("repairable", [0, 1, 2, 3], [[0, 4096]])
    out = run(_isolated_home, "parity", "verify", str(image))
    assert out.stdout == (f"{image}: 4 damaged block(s) of 1024 bytes at [0, 4096); repairable from parity "
                          "(`selfheal heal`)\n")
    out = run(_isolated_home, "heal", str(image), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["action"] == "repair_parity"
    assert image.read_bytes() == good
    assert heal_rows() == [("repair_parity", "healed")]
    out = run(_isolated_home, "parity", "verify", str(image))
    blocks = P.choose_layout(len(good), 2).n_blocks
    assert (out.returncode, out.stdout) == (0, f"{image}: intact ({len(good)} bytes, {blocks} blocks verified)\n")


@pytest.mark.slow
def test_cli_parity_of_any_file_and_exit_codes(tmp_path, _isolated_home):
    image = tmp_path / "free.rts.png"
    write_image(random.Random(4).randbytes(50_000), image)
    good = image.read_bytes()
    target = tmp_path / "free.parity"
    out = run(_isolated_home, "parity", "create", str(image), "--out", str(target), "--percent", "5", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["path"], info["percent"], info["capacity"]["r"]) == (str(target), 5.0, 10)
    assert run(_isolated_home, "parity", "verify", str(image), "--parity", str(target)).returncode == 0
    raw = bytearray(target.read_bytes())
    raw[-60] ^= 1  # the second header copy: the file is intact, the parity degraded
    target.chmod(0o600)
    target.write_bytes(bytes(raw))
    out = run(_isolated_home, "parity", "verify", str(image), "--parity", str(target), "--json")
    assert (out.returncode, json.loads(out.stdout)["status"]) == (1, "parity_damaged")
    image.write_bytes(good[:1000])
    out = run(_isolated_home, "parity", "verify", str(image), "--parity", str(target), "--json")
    assert (out.returncode, json.loads(out.stdout)["status"]) == (2, "unrepairable")
    out = run(_isolated_home, "parity", "verify", str(image), "--parity", str(tmp_path / "none.parity"))
    assert (out.returncode, out.stdout) == (3, "")
    assert out.stderr == f"selfheal: {tmp_path / 'none.parity'}: no such file\n"
    out = run(_isolated_home, "parity", "verify", str(image))
    assert (out.returncode, out.stderr) == (3, f"selfheal: {image}: not registered; pass --parity FILE to verify "
                                               "against a parity file\n")
    assert run(_isolated_home, "parity", "create", str(image), "--percent", "0").returncode == 64


@pytest.mark.slow
def test_cli_create_for_a_registered_image_uses_the_golden_copy_when_the_file_is_damaged(tmp_path, _isolated_home):
    image = tmp_path / "k.rts.png"
    write_image(random.Random(5).randbytes(30_000), image)
    good = image.read_bytes()
    assert run(_isolated_home, "register", str(image)).returncode == 0
    image.write_bytes(mutate(good, 10, 10))
    out = run(_isolated_home, "parity", "create", str(image), "--percent", "10", "--json")
    assert out.returncode == 0, out.stderr
    parity = P.load(json.loads(out.stdout)["path"])
    assert (parity.percent, parity.file_sha256) == (10.0, hashlib.sha256(good).hexdigest())
    for golden in (_isolated_home / "golden").rglob("*.rts.png"):
        golden.chmod(0o600)
        golden.unlink()
    out = run(_isolated_home, "parity", "create", str(image))
    assert out.returncode == 2
    assert "differs from its registered content and the golden copy is missing or damaged" in out.stderr
    assert os.path.exists(json.loads(run(_isolated_home, "parity", "verify", str(image), "--json").stdout)["parity_path"])


def test_a_parity_repair_killed_after_the_replace_is_reconciled(settings, registered):
    """A process killed between the atomic replace and its final heal row: the file is the repaired one,
    the row stays "started", and the next start finishes it as restored (the file has the sha256 the
    started row names)."""
    import sys

    image, good, out = registered
    image.write_bytes(mutate(good, 100, 10))
    script = ("import os, healing.images.healer as h\n"
              "h.sha256_file = lambda *a, **k: os._exit(9)  # dies right after the replace\n"
              "from healing.config import load_settings\n"
              "from healing.images.service import ImageService\n"
              f"ImageService(load_settings()).heal({str(image)!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=subprocess_env(SELFHEAL_HOME=str(settings.home)))
    assert proc.returncode == 9, proc.stderr
    assert image.read_bytes() == good
    assert heal_rows(out["image"]["id"]) == [("repair_parity", "started")]
    assert ImageService(settings).reconcile_heals() == [out["image"]["id"]]
    assert heal_rows(out["image"]["id"]) == [("repair_parity", "restored")]
