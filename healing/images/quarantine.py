"""Quarantine: keep a copy of a damaged file (and its sidecar) before anything overwrites it, and prune
copies older than ``healing.quarantine_retention_days``."""

from __future__ import annotations

import calendar
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.errors import InputError
from healing.images.golden import FILE_MODE, TMP_MARK, atomic_copy, private_dir
from healing.safeio import WriteError, describe_oserror, kind_of

_NAME_MAX = 180  # of the image's name kept in a copy's name (stamp, counter and ".meta.json" must fit in 255)


def _sidecar_entry(image: Path) -> Path | None:
    """The image's sidecar as it sits in the directory (a symlink counts, and is not followed)."""
    from healing.pixelrts._metadata import sidecar_candidates

    for candidate in sidecar_candidates(image):
        if os.path.lexists(candidate):
            return candidate
    return None


def _preserve(source: Path, target: Path) -> None:
    """Put ``source`` itself at ``target``: a regular file is copied (mode 0400), a symlink is recreated as a
    symlink with the same target text (the content it points to is never read). Anything else (FIFO,
    device, socket, directory) is refused with one InputError line: there is no content to keep."""
    try:
        st = os.lstat(source)
    except OSError as exc:
        raise InputError(f"{source}: cannot quarantine ({describe_oserror(exc)})") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            os.symlink(os.readlink(source), target)
        except OSError as exc:
            raise WriteError(f"cannot write {target}: {describe_oserror(exc)}") from None
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{source}: is {kind_of(st.st_mode)}; nothing to quarantine")
    atomic_copy(source, target, mode=FILE_MODE)


def quarantine_copy(image: str | os.PathLike[str], quarantine_dir: str | os.PathLike[str], *, now: float | None = None) -> Path:
    """Keep ``image`` as it is now in ``quarantine_dir/<UTC timestamp>-<name>`` (never moves it); return the path.

    A regular file is copied (0400, in a 0700 directory); a symlink is stored as a symlink (never its
    target's content). A FIFO, device or directory raises InputError; a write failure WriteError."""
    image = Path(image)
    qdir = private_dir(Path(quarantine_dir))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    name = image.name[:_NAME_MAX]
    target = qdir / f"{stamp}-{name}"
    counter = 1
    while os.path.lexists(target):
        counter += 1
        target = qdir / f"{stamp}-{counter}-{name}"
    _preserve(image, target)
    side = _sidecar_entry(image)
    if side is not None:
        try:
            _preserve(side, target.with_name(target.name + ".meta.json"))
        except InputError:
            pass  # a sidecar that is a FIFO or device has no content to keep; the image copy is what matters
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
    return path.lstat().st_mtime


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

    Only files and symlinks (quarantined links) directly in the directory are considered, never followed; a
    file that cannot be removed is reported in ``errors`` and the rest go on. A missing directory is an
    empty quarantine.
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
            st = entry.lstat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) or entry.name.startswith(TMP_MARK):
                continue
            size = st.st_size
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
