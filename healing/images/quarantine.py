"""Quarantine: keep a copy of a damaged file (and its sidecar) before anything overwrites it, and prune
copies older than ``healing.quarantine_retention_days``."""

from __future__ import annotations

import calendar
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.images.golden import atomic_copy, sidecar_of


def quarantine_copy(image: str | os.PathLike[str], quarantine_dir: str | os.PathLike[str], *, now: float | None = None) -> Path:
    """Copy ``image`` to ``quarantine_dir/<UTC timestamp>-<name>`` (never moves it); return the copy's path."""
    image = Path(image)
    qdir = Path(quarantine_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    base = f"{stamp}-{image.name}"
    target = qdir / base
    counter = 1
    while target.exists():
        counter += 1
        target = qdir / f"{stamp}-{counter}-{image.name}"
    atomic_copy(image, target, mode=0o444)
    side = sidecar_of(image)
    if side is not None:
        atomic_copy(side, target.with_name(target.name + ".meta.json"), mode=0o444)
    return target


_STAMP = re.compile(r"^(\d{8}T\d{6}Z)-")


def quarantined_at(path: Path) -> float:
    """When a quarantine copy was taken: the UTC stamp its name starts with, else its mtime."""
    match = _STAMP.match(path.name)
    if match:
        try:
            return calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%SZ"))
        except ValueError:
            pass
    return path.stat().st_mtime


@dataclass
class PruneReport:
    """What a prune removed (or, with dry_run, would remove) and what it kept."""

    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"removed": len(self.removed), "removed_bytes": self.removed_bytes, "kept": self.kept,
                "kept_bytes": self.kept_bytes, "files": self.removed, "errors": self.errors}


def prune_quarantine(quarantine_dir: str | os.PathLike[str], *, older_than_s: float, now: float | None = None,
                     dry_run: bool = False) -> PruneReport:
    """Delete quarantine copies (and their sidecars) taken more than ``older_than_s`` seconds ago.

    Only plain files directly in the directory are considered; a file that cannot be removed is reported
    in ``errors`` and the rest go on. A missing directory is an empty quarantine.
    """
    report = PruneReport()
    qdir = Path(quarantine_dir)
    cutoff = (now if now is not None else time.time()) - older_than_s
    try:
        entries = sorted(qdir.iterdir())
    except FileNotFoundError:
        return report
    for entry in entries:
        try:
            if not entry.is_file() or entry.is_symlink():
                continue
            size = entry.stat().st_size
            if quarantined_at(entry) >= cutoff:
                report.kept += 1
                report.kept_bytes += size
                continue
            if not dry_run:
                entry.unlink()
        except OSError as exc:
            report.errors.append(f"{entry}: {exc.strerror or exc}")
            continue
        report.removed.append(str(entry))
        report.removed_bytes += size
    return report
