"""Quarantine retention: old copies (and their sidecars) are pruned by age, audited, by the worker and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlmodel import select

from healing.config import load_settings
from healing.images.quarantine import prune_quarantine, quarantine_copy, quarantined_at
from healing.images.registry import register_image
from healing.images.service import KIND_QUARANTINE_PRUNED, ImageService
from healing.pixelrts import write_image
from healing.worker import Worker
from storage.audit import verify_chain
from storage.engine import session_scope
from storage.models import AuditEvent
from tests.conftest import selfheal_cmd, subprocess_env
from tests.images.conftest import flip_idat_byte

DAY = 86400.0
NOW = 1_790_000_000.0  # 2026-09-21T13:33:20Z


def _quarantine(tmp_path: Path, qdir: Path, name: str, age_days: float) -> Path:
    image = tmp_path / "src" / name
    image.parent.mkdir(exist_ok=True)
    write_image(name.encode() * 50, image)  # writes the .meta.json sidecar too
    return quarantine_copy(image, qdir, now=NOW - age_days * DAY)


def test_prune_removes_copies_and_sidecars_past_the_age_and_keeps_the_rest(tmp_path: Path) -> None:
    qdir = tmp_path / "quarantine"
    old = _quarantine(tmp_path, qdir, "old.rts.png", 45)
    edge = _quarantine(tmp_path, qdir, "edge.rts.png", 29.9)
    new = _quarantine(tmp_path, qdir, "new.rts.png", 1)
    assert quarantined_at(old) == NOW - 45 * DAY
    stray = qdir / "operator-notes.txt"  # no stamp in its name: its mtime decides
    stray.write_text("kept for the incident report")
    os.utime(stray, (NOW - 90 * DAY, NOW - 90 * DAY))
    (qdir / "subdir").mkdir()  # directories are never touched
    sizes = {p.name: p.stat().st_size for p in qdir.iterdir() if p.is_file()}

    dry = prune_quarantine(qdir, older_than_s=30 * DAY, now=NOW, dry_run=True)
    assert sorted(Path(p).name for p in dry.removed) == sorted([old.name, old.name + ".meta.json", stray.name])
    assert all(Path(p).exists() for p in dry.removed)

    report = prune_quarantine(qdir, older_than_s=30 * DAY, now=NOW)
    assert sorted(Path(p).name for p in report.removed) == sorted([old.name, old.name + ".meta.json", stray.name])
    assert report.removed_bytes == sizes[old.name] + sizes[old.name + ".meta.json"] + sizes[stray.name]
    assert (report.kept, report.errors) == (4, [])
    assert sorted(p.name for p in qdir.iterdir()) == sorted(
        [edge.name, edge.name + ".meta.json", new.name, new.name + ".meta.json", "subdir"])
    assert prune_quarantine(tmp_path / "never-created", older_than_s=0).as_dict()["removed"] == 0


def test_a_file_that_cannot_be_removed_is_reported_and_the_rest_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qdir = tmp_path / "quarantine"
    stuck = _quarantine(tmp_path, qdir, "stuck.rts.png", 40)
    _quarantine(tmp_path, qdir, "gone.rts.png", 40)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    report = prune_quarantine(qdir, older_than_s=30 * DAY, now=NOW)
    assert report.errors == [f"{stuck}: Permission denied"]
    assert sorted(p.name for p in qdir.iterdir()) == [stuck.name]
    assert len(report.removed) == 3


def test_service_prunes_by_the_configured_retention_and_audits_it(settings, make_image, tmp_path: Path) -> None:
    image = make_image()
    register_image(image, settings=settings)
    flip_idat_byte(image)
    service = ImageService(settings)
    heal = service.heal(str(image))
    assert heal.healthy and heal.quarantine_path
    copies = sorted(p.name for p in settings.quarantine_dir.iterdir())
    assert len(copies) == 2  # the damaged image and its sidecar

    assert service.prune_quarantine(now=time.time() + 29 * DAY).removed == []  # default retention: 30 days
    report = service.prune_quarantine(now=time.time() + 31 * DAY)
    assert sorted(Path(p).name for p in report.removed) == copies
    assert list(settings.quarantine_dir.iterdir()) == []
    with session_scope(write=False) as session:
        [event] = session.exec(select(AuditEvent).where(AuditEvent.kind == KIND_QUARANTINE_PRUNED)).all()
        assert (event.actor, event.subject) == ("worker", str(settings.quarantine_dir))
        payload = json.loads(event.payload)
        assert (payload["removed"], payload["older_than_days"], sorted(payload["files"])) == (2, 30.0, copies)
        assert verify_chain(session).ok

    settings.healing.quarantine_retention_days = 0  # keep forever: nothing is pruned however old
    _quarantine(tmp_path, settings.quarantine_dir, "ancient.rts.png", 3650)
    assert service.prune_quarantine().removed == []
    assert len(list(settings.quarantine_dir.iterdir())) == 2


def test_worker_once_prunes_the_quarantine(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("healing:\n  quarantine_retention_days: 7\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    qdir = settings.quarantine_dir
    old = quarantine_copy(_write(tmp_path / "a.rts.png"), qdir, now=time.time() - 8 * DAY)
    recent = quarantine_copy(_write(tmp_path / "b.rts.png"), qdir, now=time.time() - 6 * DAY)
    Worker(load_settings()).run_once()
    assert not old.exists() and recent.exists()


def _write(path: Path) -> Path:
    write_image(b"payload" * 100, path)
    return path


def test_quarantine_cli_list_and_prune(settings, tmp_path: Path) -> None:
    env = subprocess_env(SELFHEAL_HOME=str(settings.home))
    qdir = settings.quarantine_dir

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*selfheal_cmd(), "quarantine", *args], capture_output=True, text=True, env=env, timeout=60)

    out = run("list")
    assert (out.returncode, out.stdout) == (0, f"quarantine is empty ({qdir})\n")
    old = quarantine_copy(_write(tmp_path / "a.rts.png"), qdir, now=time.time() - 40 * DAY)
    quarantine_copy(_write(tmp_path / "b.rts.png"), qdir, now=time.time() - 2 * DAY)

    out = run("list", "--json")
    rows = json.loads(out.stdout)
    assert [Path(r["path"]).name for r in rows][:2] == [old.name, old.name + ".meta.json"]
    assert rows[0]["bytes"] == old.stat().st_size and len(rows) == 4

    out = run("prune", "--dry-run", "--json")
    report = json.loads(out.stdout)
    assert (out.returncode, report["dry_run"], report["older_than_days"], report["removed"], report["kept"]) == (0, True, 30.0, 2, 2)
    assert old.exists()

    out = run("prune")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("removed 2 files (") and out.stdout.splitlines()[-1].endswith(
        " older than 30 days; kept 2 (" + str(sum(p.stat().st_size for p in qdir.iterdir())) + " bytes)")
    assert not old.exists()

    out = run("prune", "--older-than", "0", "--json")
    assert json.loads(out.stdout)["removed"] == 2 and list(qdir.iterdir()) == []

    out = run("prune", "--older-than", "-1")
    assert out.returncode == 64 and "argument --older-than: must be between 0 and 36500 days, got -1" in out.stderr


@pytest.mark.parametrize(("value", "message"), [
    (-1, "config: healing.quarantine_retention_days must be ≥ 0, got -1.0"),
    ("soon", "config: healing.quarantine_retention_days must be a number, got 'soon'"),
])
def test_retention_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: object, message: str) -> None:
    from healing.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text(f"healing:\n  quarantine_retention_days: {value}\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == message


def test_retention_defaults_to_30_days_and_reads_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().healing.quarantine_retention_days == 30.0
    config = tmp_path / "c.yaml"
    config.write_text("healing:\n  quarantine_retention_days: 0.5\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    assert load_settings().healing.quarantine_retention_days == 0.5
