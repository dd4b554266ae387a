import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from sqlmodel import select

from healing.errors import CorruptedError, InputError
from healing.images.golden import sha256_file
from healing.images.registry import register_image
from healing.images.service import ImageService
from healing.pixelrts import write_image
from storage import queries
from storage.engine import session_scope
from storage.models import Alert, AuditEvent, Check, Heal
from tests.images.conftest import flip_idat_byte


def rows(model, **where):
    query = select(model).order_by(model.id)
    for key, value in where.items():
        query = query.where(getattr(model, key) == value)
    with session_scope(write=False) as session:
        return [r.model_dump() for r in session.exec(query)]


def audit_kinds(subject=None):
    return [e["kind"] for e in rows(AuditEvent, **({"subject": subject} if subject else {}))]


def hash_mismatch(path: Path) -> None:
    """Same grid, new payload, old metadata: a PixelRTS image whose data_hash does not match."""
    sidecar = path.with_name(path.name + ".meta.json")
    old_meta = sidecar.read_bytes()
    size = json.loads(old_meta)["data_size"]
    write_image(os.urandom(size), path, sidecar=False)
    sidecar.write_bytes(old_meta)


# --------------------------------------------------------------------------- registration

def test_register_stores_golden_copy_baseline_and_row(settings, make_image):
    image = make_image()
    out = register_image(image, settings=settings, critical=True, interval_s=60)
    sha = sha256_file(image)
    assert out["golden_sha256"] == sha and out["changed"] is False and out["hash_verified"] is True
    golden = settings.golden_dir / sha[:2] / f"{sha}.rts.png"
    assert golden.read_bytes() == image.read_bytes()
    baseline = json.loads(Path(out["baseline_path"]).read_text())
    assert Path(out["baseline_path"]) == settings.home / "baselines" / sha[:2] / f"{sha}.json"
    n = json.loads(image.with_name(image.name + ".meta.json").read_text())["grid_size"]
    assert baseline["block_size"] == 4096 and len(baseline["block_sha256"]) == -(-4 * n * n // 4096)
    assert len(baseline["block_entropy"]) == len(baseline["block_sha256"])
    row = out["image"]
    assert (row["path"], row["critical"], row["interval_s"], row["golden_sha256"]) == (str(image), True, 60, sha)
    assert row["baseline"]["sidecar_name"] == "kernel.rts.png.meta.json"
    assert audit_kinds(str(image)) == ["image.registered"]


def test_register_uses_configured_interval_by_default(settings, make_image):
    settings.health_check.interval = 123
    out = register_image(make_image(), settings=settings)
    assert out["image"]["interval_s"] == 123 and out["image"]["critical"] is False


def test_register_refuses_a_hash_mismatch_unless_accepted(settings, make_image):
    image = make_image()
    hash_mismatch(image)
    with pytest.raises(CorruptedError, match="refusing to register a damaged image.*--accept-current"):
        register_image(image, settings=settings)
    assert audit_kinds(str(image)) == ["image.register_refused"]
    assert not settings.golden_dir.exists()
    out = register_image(image, settings=settings, accept_current=True)
    assert out["accepted_current"] is True and out["hash_verified"] is False
    assert out["image"]["baseline"]["accepted_with_problems"]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_register_bad_input_is_input_error(settings, tmp_path, kind):
    target = tmp_path / "x.rts.png"
    if kind == "directory":
        target.mkdir()
    with pytest.raises(InputError, match="no such file" if kind == "missing" else "is a directory"):
        register_image(target, settings=settings)


def test_reregistering_a_change_accepts_it_and_clears_marked_bad(settings, make_image):
    image = make_image()
    first = register_image(image, settings=settings)
    with session_scope() as session:
        queries.set_image_flags(session, first["image"]["id"], marked_bad=True, consecutive_heal_failures=3)
    write_image(os.urandom(5000), image)
    second = register_image(image, settings=settings)
    assert second["changed"] is True and second["golden_sha256"] == sha256_file(image) != first["golden_sha256"]
    assert second["image"]["marked_bad"] is False and second["image"]["consecutive_heal_failures"] == 0
    assert "image.change_accepted" in audit_kinds(str(image))
    # both golden copies are kept (content-addressed)
    assert len(list(settings.golden_dir.rglob("*.rts.png"))) == 2


# --------------------------------------------------------------------------- checks

def test_unchanged_file_reuses_the_analysis_but_bit_rot_is_caught(settings, make_image):
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    service = ImageService(settings)
    first, second = service.check(image_id), service.check(image_id)
    assert (first.status, first.reused, second.status, second.reused) == ("healthy", False, "healthy", True)
    assert second.result["metrics"] == first.result["metrics"]
    stat = image.stat()
    raw = bytearray(image.read_bytes())
    raw[-20] ^= 0x01  # same size …
    image.write_bytes(bytes(raw))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # … same mtime
    third = service.check(image_id)
    assert third.reused is False and third.status == "critical"
    checks = rows(Check, image_id=image_id)
    assert [c["reused_analysis"] for c in checks] == [False, True, False]
    assert checks[0]["file_sha256"] == checks[1]["file_sha256"] != checks[2]["file_sha256"]
    assert audit_kinds(str(image)).count("check") == 3


def test_critical_without_auto_heal_is_recorded_and_alerted_not_healed(settings, make_image):
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    damaged = flip_idat_byte(image)
    record = ImageService(settings).check(image_id)
    assert record.status == "critical" and record.heal is None
    assert image.read_bytes() == damaged
    assert [(a["kind"], a["severity"], a["webhook_state"]) for a in rows(Alert)] == [("image.critical", "critical", "none")]
    ImageService(settings).check(image_id)
    assert len(rows(Alert)) == 1  # no alert storm while the status stays critical


def test_auto_heal_quarantines_restores_and_records(settings, make_image):
    settings.health_check.auto_heal = True
    settings.healing.parity_percent = 0  # the golden-restore path: no parity is made at register
    image = make_image()
    good = image.read_bytes()
    image_id = register_image(image, settings=settings)["image"]["id"]
    damaged = flip_idat_byte(image)
    record = ImageService(settings).check(image_id)
    assert record.status == "critical" and record.heal.healthy and record.heal.action == "restore_golden"
    assert image.read_bytes() == good
    quarantined = Path(record.heal.quarantine_path)
    assert quarantined.parent == settings.quarantine_dir and quarantined.read_bytes() == damaged
    heals = rows(Heal, image_id=image_id)
    assert [(h["action"], h["outcome"]) for h in heals] == [("restore_golden", "healed")]
    assert [a["kind"] for a in rows(Alert)] == ["image.critical", "image.healed"]
    with session_scope(write=False) as session:
        assert queries.get_image(session, image_id=image_id)["last_status"] == "healthy"
    kinds = audit_kinds(str(image))
    assert kinds.index("heal.decision") < kinds.index("heal") < len(kinds) - 1


def test_changed_but_valid_is_a_security_warning_not_reverted(settings, make_image):
    settings.health_check.auto_heal = True
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    write_image(os.urandom(7000), image)
    changed = image.read_bytes()
    record = ImageService(settings).check(image_id)
    assert record.status == "warning" and record.unexpected_change and record.heal is None
    security = [f for f in record.result["findings"] if f["category"] == "security"]
    assert len(security) == 1 and security[0]["severity"] == "high" and "possible tampering" in security[0]["description"]
    assert image.read_bytes() == changed
    assert [a["kind"] for a in rows(Alert)] == ["image.unexpected_change"]
    again = ImageService(settings).check(image_id)  # reused analysis keeps exactly one security finding
    assert again.reused and len([f for f in again.result["findings"] if f["category"] == "security"]) == 1


def test_changed_but_valid_is_reverted_when_policy_says_so(settings, make_image):
    settings.health_check.auto_heal = True
    settings.healing.revert_unexpected_changes = True
    image = make_image()
    good = image.read_bytes()
    image_id = register_image(image, settings=settings)["image"]["id"]
    write_image(os.urandom(7000), image)
    record = ImageService(settings).check(image_id)
    assert record.unexpected_change and record.heal.healthy and image.read_bytes() == good


def test_repeated_heal_failures_escalate_and_stop_auto_heal(settings, make_image):
    settings.health_check.auto_heal = True
    settings.healing.parity_percent = 0  # the golden-restore path: no parity is made at register
    settings.healing.max_heal_attempts = 2
    image = make_image()
    out = register_image(image, settings=settings)
    image_id = out["image"]["id"]
    golden = Path(out["image"]["golden_path"])
    golden.chmod(0o644)
    golden.unlink()  # the golden copy is gone: every restore fails
    flip_idat_byte(image)
    service = ImageService(settings)
    first = service.check(image_id)
    assert first.heal is not None and not first.heal.healthy and not first.heal.escalated
    assert "golden copy" in first.heal.message
    second = service.check(image_id)
    assert second.heal.escalated
    with session_scope(write=False) as session:
        row = queries.get_image(session, image_id=image_id)
    assert row["marked_bad"] is True and row["consecutive_heal_failures"] == 2
    third = service.check(image_id)
    assert third.heal is None  # auto-heal stopped until an operator acts
    assert [(h["action"], h["outcome"]) for h in rows(Heal)] == [
        ("restore_golden", "failed"), ("restore_golden", "failed"), ("escalate", "escalated")]
    assert [a["kind"] for a in rows(Alert)] == ["image.critical", "image.heal_failed", "image.heal_failed", "image.escalated"]
    decisions = [json.loads(e["payload"])["decision"] for e in rows(AuditEvent, kind="heal.decision")]
    assert decisions == ["heal", "heal", "skipped"]
    # an explicit heal still runs (and fails: exit 2 territory)
    assert service.heal(str(image)).healthy is False


def test_explicit_heal_of_healthy_image_does_nothing(settings, make_image):
    image = make_image()
    register_image(image, settings=settings)
    report = ImageService(settings).heal(str(image))
    assert report.healthy and report.action == "none" and rows(Heal) == []


def test_custom_actions_sync_async_and_failing(settings, make_image):
    settings.health_check.auto_heal = True
    image = make_image()
    good = image.read_bytes()
    image_id = register_image(image, settings=settings)["image"]["id"]
    seen = []

    async def declines(result):
        seen.append(("declines", result.status, result.image_path))
        return False

    def explodes(result):
        raise RuntimeError("boom")

    def fixes(result):
        seen.append(("fixes", result.status))
        image.write_bytes(good)
        return True

    service = ImageService(settings, actions=[declines, explodes, fixes])
    flip_idat_byte(image)
    record = service.check(image_id)
    assert record.heal.healthy and record.heal.action.endswith("fixes")
    assert seen == [("declines", "critical", str(image)), ("fixes", "critical")]
    heals = rows(Heal)
    assert [h["outcome"] for h in heals] == ["declined", "failed", "healed"]
    assert heals[1]["detail"]["error"] == "RuntimeError: boom"
    assert not any(h["action"] == "restore_golden" for h in heals)


def _huge_png(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 1 << 16, 1 << 16, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_hostile_files_are_recorded_and_do_not_stop_the_cycle(settings, make_image):
    names = ["truncated", "directory", "noperm", "notpng", "huge", "fine"]
    paths = {n: make_image(f"{n}.rts.png") for n in names}
    for path in paths.values():
        register_image(path, settings=settings)
    raw = paths["truncated"].read_bytes()
    paths["truncated"].write_bytes(raw[: len(raw) // 2])
    paths["directory"].unlink()
    paths["directory"].mkdir()
    paths["noperm"].chmod(0)
    paths["notpng"].write_bytes(b"this is not a png at all")
    _huge_png(paths["huge"])
    records = {Path(r.image_path).name.split(".")[0]: r for r in ImageService(settings).check_all()}
    paths["noperm"].chmod(0o644)
    expected = {"truncated": "critical", "directory": "critical", "notpng": "unknown", "huge": "unknown", "fine": "healthy"}
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        expected["noperm"] = "unknown"
    assert {k: records[k].status for k in expected} == expected
    assert records["directory"].result["findings"][0] == {
        "category": "security", "severity": "high", "byte_range": None, "region": None, "source": "registry",
        "description": f"{paths['directory']}: registered image was replaced by a directory, not a regular file"}
    assert "exceed the limit" in records["huge"].result["findings"][0]["description"]
    assert len(rows(Check)) == len(names)
    alerted = sorted(Path(a["subject"]).name.split(".")[0] + ":" + a["kind"] for a in rows(Alert))
    kinds = {"truncated": "critical", "directory": "security"}
    assert alerted == sorted(f"{k}:image.{kinds.get(k, 'unknown')}" for k, v in expected.items() if v != "healthy")


def test_missing_registered_image_is_critical_and_restored(settings, make_image):
    settings.health_check.auto_heal = True
    image = make_image()
    good = image.read_bytes()
    image_id = register_image(image, settings=settings)["image"]["id"]
    image.unlink()
    record = ImageService(settings).check(image_id)
    assert record.status == "critical" and "missing" in record.result["findings"][0]["description"]
    assert record.heal.healthy and image.read_bytes() == good


def test_adhoc_check_of_unregistered_file(settings, make_image, tmp_path):
    image = make_image()
    record = ImageService(settings).check_path(str(image))
    assert record.image_id is None and record.status == "healthy"
    shutil.rmtree(image.parent)
    gone = ImageService(settings).check_path(str(image))
    assert gone.status == "unknown" and "no such file" in gone.result["findings"][0]["description"]
    assert [c["image_id"] for c in rows(Check)] == [None, None]


def test_plain_png_is_judged_against_its_baseline(settings, tmp_path):
    import cv2
    import numpy as np

    path = tmp_path / "plain.png"
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    cv2.imwrite(str(path), pixels)
    image_id = register_image(path, settings=settings)["image"]["id"]
    assert ImageService(settings).check(image_id).status == "healthy"
    pixels[10, 10, 0] ^= 0xFF
    cv2.imwrite(str(path), pixels)
    record = ImageService(settings).check(image_id)
    assert record.status == "critical"
    ranges = [f["byte_range"] for f in record.result["findings"] if f["category"] == "corruption"]
    assert len(ranges) == 1 and ranges[0][1] - ranges[0][0] == 4096
    assert ImageService(settings).check_path(str(tmp_path / "plain.png")).status == "critical"


def test_explicit_heal_reverts_an_unexpected_change(settings, make_image):
    image = make_image()
    good = image.read_bytes()
    register_image(image, settings=settings)
    write_image(os.urandom(7000), image)
    report = ImageService(settings).heal(str(image))
    assert (report.healthy, report.action) == (True, "restore_golden") and image.read_bytes() == good
    decision = json.loads(rows(AuditEvent, kind="heal.decision")[0]["payload"])
    assert (decision["trigger"], decision["status"], decision["unexpected_change"]) == ("explicit", "warning", True)
