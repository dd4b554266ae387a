"""Heals that a crash cut short, hostile directory entries at a registered path, and the quarantine's
handling of links — in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from healing.images.golden import TMP_MARK, GoldenStore, atomic_copy, is_stale_temp, remove_stale_temp_files
from healing.images.healer import restore_from_golden
from healing.images.quarantine import prune_quarantine, quarantine_copy
from healing.images.registry import register_image
from healing.images.service import ImageService
from healing.safeio import WriteError
from storage import queries
from storage.engine import session_scope
from storage.models import Alert, AuditEvent, Heal, Image
from tests.images.conftest import flip_idat_byte


def rows(model):
    with session_scope(write=False) as session:
        return [r.model_dump() for r in session.exec(select(model).order_by(model.id))]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def started_heal(image: dict, *, pid: int, host: str | None = None) -> int:
    """A heal row as a process killed after 'started' leaves it."""
    import socket

    with session_scope() as session:
        return int(queries.record_heal(
            session, image_path=image["path"], action="restore_golden", outcome=queries.HEAL_STARTED,
            image_id=image["id"], source_path=image["golden_path"], quarantine_path="/q/copy",
            detail={"trigger": "auto", "golden_sha256": image["golden_sha256"],
                    "owner": {"pid": pid, "host": host or socket.gethostname()}}, actor="worker")["id"])


def heal_events(heal_id: int) -> list[str]:
    import json

    with session_scope(write=False) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.kind == "heal").order_by(AuditEvent.seq)).all()
        return [json.loads(e.payload)["outcome"] for e in events if json.loads(e.payload)["heal_id"] == heal_id]


def test_reconcile_finishes_a_completed_restore_and_an_interrupted_one(settings, make_image):
    done, cut = make_image("done.rts.png"), make_image("cut.rts.png")
    images = {p: register_image(p, settings=settings)["image"] for p in (done, cut)}
    flip_idat_byte(cut)  # the killed process never replaced it
    with session_scope() as session:
        queries.set_image_flags(session, images[done]["id"], consecutive_heal_failures=2, actor="test")
    ids = {p: started_heal(images[p], pid=dead_pid()) for p in (done, cut)}
    service = ImageService(settings)
    assert service.reconcile_heals() == sorted(images[p]["id"] for p in (done, cut))
    by_id = {h["id"]: h for h in rows(Heal)}
    assert by_id[ids[done]]["outcome"] == "restored"
    assert by_id[ids[cut]]["outcome"] == "interrupted"
    assert by_id[ids[cut]]["detail"]["message"] == "the process stopped during the heal; the file was not replaced"
    assert heal_events(ids[done]) == ["started", "restored"] and heal_events(ids[cut]) == ["started", "interrupted"]
    flags = {r["path"]: r["consecutive_heal_failures"] for r in rows(Image)}
    assert flags == {str(done): 0, str(cut): 0}  # the completed restore reset the counter; an interruption counts nothing
    assert [(a["kind"], Path(a["subject"]).name) for a in rows(Alert)] == [("image.healed", "done.rts.png")]
    assert service.reconcile_heals() == []  # finished once


def test_reconcile_leaves_a_heal_whose_process_is_alive(settings, make_image):
    path = make_image()
    image = register_image(path, settings=settings)["image"]
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        heal_id = started_heal(image, pid=alive.pid)
        other_host = started_heal(image, pid=1, host="elsewhere.example")
        assert ImageService(settings).reconcile_heals() == []
    finally:
        alive.kill()
        alive.wait()
    assert {h["id"]: h["outcome"] for h in rows(Heal)} == {heal_id: "started", other_host: "started"}
    assert ImageService(settings).reconcile_heals() == [image["id"]]  # its process is gone now
    assert {h["id"]: h["outcome"] for h in rows(Heal)} == {heal_id: "restored", other_host: "started"}


def test_stale_temp_files_are_removed_but_live_ones_are_not(tmp_path):
    directory = tmp_path / "imgs"
    directory.mkdir()
    stale = directory / f"{TMP_MARK}{dead_pid()}-0a0b0c0d-kernel.rts.png"
    old_style = directory / f"{TMP_MARK}kernel.rts.png.123"
    mine_unknown = directory / f"{TMP_MARK}{os.getpid()}-00000000-kernel.rts.png"
    alive = directory / f"{TMP_MARK}1-00000000-kernel.rts.png"  # pid 1 is always alive
    other = directory / "kernel.rts.png"
    for p in (stale, old_style, mine_unknown, alive, other):
        p.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(directory)) == sorted(map(str, (stale, old_style, mine_unknown)))
    assert sorted(p.name for p in directory.iterdir()) == sorted([alive.name, other.name])
    assert not is_stale_temp(other)


def test_registered_image_replaced_by_symlink_fifo_or_device_is_a_security_finding(settings, make_image, tmp_path):
    names = ("link", "fifo", "devnull")
    paths = {n: make_image(f"{n}.rts.png") for n in names}
    for p in paths.values():
        register_image(p, settings=settings)
    target = tmp_path / "elsewhere.rts.png"
    target.write_bytes(paths["link"].read_bytes())  # even a link to an identical, valid file
    paths["link"].unlink()
    paths["link"].symlink_to(target)
    paths["fifo"].unlink()
    os.mkfifo(paths["fifo"])
    paths["devnull"].unlink()
    paths["devnull"].symlink_to("/dev/null")
    service = ImageService(settings)
    records = {n: service.check(_id(p), allow_heal=False) for n, p in paths.items()}
    assert {n: (r.status, r.result["findings"][0]["category"]) for n, r in records.items()} == {
        n: ("critical", "security") for n in names}
    assert records["link"].result["findings"][0]["description"] == (
        f"{paths['link']}: registered image was replaced by a symbolic link (to {target}); the link is not followed")
    assert sorted((a["kind"], a["severity"]) for a in rows(Alert)) == [("image.security", "critical")] * 3
    for p in paths.values():  # checked again: no new alert for the same finding
        service.check(_id(p), allow_heal=False)
    assert len(rows(Alert)) == 3


def _id(path: Path) -> int:
    with session_scope(write=False) as session:
        return int(queries.get_image(session, path=str(path))["id"])


def test_registering_a_symlink_is_refused(settings, make_image, tmp_path):
    from healing.errors import InputError

    real = make_image()
    link = tmp_path / "link.rts.png"
    link.symlink_to(real)
    with pytest.raises(InputError) as err:
        register_image(link, settings=settings)
    assert str(err.value) == f"{link}: is a symbolic link; register the file it points to ({real})"


def test_restore_replaces_a_symlink_and_never_writes_through_it(tmp_path, make_image):
    image = make_image()
    good = image.read_bytes()
    store = GoldenStore(tmp_path / "golden")
    ref = store.store(image)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o600)
    image.unlink()
    image.symlink_to(victim)
    outcome = restore_from_golden(image, ref, store, quarantine_dir=tmp_path / "q")
    assert outcome.healed, outcome.message
    assert not image.is_symlink() and image.read_bytes() == good
    assert victim.read_bytes() == b"precious" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    kept = Path(outcome.quarantine_path)
    assert kept.is_symlink() and os.readlink(kept) == str(victim)
    assert outcome.before_sha256 is None and outcome.details["found"] == "a symbolic link"


def test_quarantine_copies_are_private_and_links_are_pruned_too(tmp_path, make_image):
    image = make_image()
    qdir = tmp_path / "q"
    copy = quarantine_copy(image, qdir, now=1_000_000)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o400 and stat.S_IMODE(qdir.stat().st_mode) == 0o700
    link = tmp_path / "link.rts.png"
    link.symlink_to("/etc/shadow")
    kept = quarantine_copy(link, qdir, now=1_000_000)
    assert kept.is_symlink() and os.readlink(kept) == "/etc/shadow"
    report = prune_quarantine(qdir, older_than_s=1, now=2_000_000)
    assert sorted(Path(p).name for p in report.removed) == sorted(p.name for p in (copy, copy.with_name(
        copy.name + ".meta.json"), kept))
    assert list(qdir.iterdir()) == []


def test_a_failed_quarantine_copy_stops_the_heal_before_the_file_is_touched(settings, make_image, monkeypatch):
    settings.health_check.auto_heal = True
    settings.healing.parity_percent = 0  # the golden-restore path: no parity is made at register
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    damaged = flip_idat_byte(image)

    def full(*_args, **_kwargs):
        raise WriteError("cannot write /q/x: no space left on device")

    monkeypatch.setattr("healing.images.quarantine.atomic_copy", full)
    record = ImageService(settings).check(image_id)
    assert image.read_bytes() == damaged
    assert record.heal.healthy is False
    assert record.heal.message == ("could not quarantine the damaged file: cannot write /q/x: no space left on device")
    assert [(h["action"], h["outcome"], h["quarantine_path"]) for h in rows(Heal)] == [("restore_golden", "failed", None)]


def test_atomic_copy_failure_is_one_line_and_leaves_no_temp(tmp_path, make_image, monkeypatch):
    image = make_image()
    target = tmp_path / "out" / "copy.rts.png"
    target.parent.mkdir()

    def enospc(_fd, _data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("healing.images.golden._write_all", enospc)
    with pytest.raises(WriteError) as err:
        atomic_copy(image, target, mode=0o400)
    assert str(err.value) == f"cannot write {target}: no space left on device"
    assert list(target.parent.iterdir()) == []


def test_check_overrun_is_recorded_unknown_with_one_alert(settings, make_image):
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    service = ImageService(settings)
    service.record_overrun(image_id, 0.5, first=True)
    service.record_overrun(image_id, 12.3, first=False)
    with session_scope(write=False) as session:
        history = queries.check_history(session, image_id)
    assert [(c["status"], c["findings"][0]["category"], c["findings"][0]["description"]) for c in history] == [
        ("unknown", "performance", f"{image}: check did not finish within health_check.timeout_s (0.5 s)"),
        ("unknown", "performance", f"{image}: the previous check is still running after 12 s")]
    assert [(a["kind"], a["severity"]) for a in rows(Alert)] == [("image.check_timeout", "warning")]
