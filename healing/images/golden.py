"""Content-addressed golden copies and the atomic restore that heals an image from one.

A golden copy is stored once per content hash under ``$SELFHEAL_HOME/golden/<aa>/<sha256>.rts.png``
(plus its sidecar, if the image had one) and made read-only. Restoring writes a temporary file in the
target's own directory, fsyncs it, ``os.replace``s it over the target and fsyncs the directory: a crash
at any moment leaves either the old file or the complete restored one, never a mixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from healing.errors import InputError, reading

_BUF = 1 << 20
TMP_MARK = ".selfheal-restore-"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, streamed in 1 MiB blocks (``hashlib.file_digest`` releases the GIL)."""
    with reading(path), open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry (a no-op where the OS refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_copy(source: Path, target: Path, *, mode: int | None = None) -> None:
    """Copy ``source`` over ``target`` atomically (temp file in the same directory, fsync, replace, fsync dir)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TMP_MARK}{target.name}.{os.getpid()}")
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, _BUF)
            dst.flush()
            os.fsync(dst.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_stale_temp_files(directory: Path) -> int:
    """Delete temp files a killed restore left behind in ``directory``; returns how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if entry.name.startswith(TMP_MARK):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed += 1
    return removed


def sidecar_of(image: Path) -> Path | None:
    """The image's sidecar if one exists (same names the codec reads)."""
    from healing.pixelrts._metadata import sidecar_candidates

    for candidate in sidecar_candidates(image):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class GoldenRef:
    sha256: str
    path: Path
    sidecar: Path | None
    sidecar_name: str | None  # the file name the sidecar had next to the image

    def to_dict(self) -> dict[str, str | None]:
        return {"sha256": self.sha256, "path": str(self.path), "sidecar": str(self.sidecar) if self.sidecar else None,
                "sidecar_name": self.sidecar_name}


class GoldenStore:
    """Read-only, content-addressed copies of known-good images."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path_for(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.rts.png"

    def store(self, image: str | os.PathLike[str], sha256: str | None = None) -> GoldenRef:
        """Store ``image`` (and its sidecar) unless that content is already there; return its reference."""
        image = Path(image)
        sha = sha256 or sha256_file(image)
        target = self._path_for(sha)
        if not target.exists() or sha256_file(target) != sha:
            atomic_copy(image, target, mode=0o444)
        side = sidecar_of(image)
        side_target = None
        if side is not None:
            side_target = target.with_name(f"{sha}.meta.json")
            if not side_target.exists() or side_target.read_bytes() != side.read_bytes():
                atomic_copy(side, side_target, mode=0o444)
        return GoldenRef(sha, target, side_target, side.name if side else None)

    def ref(self, sha: str, sidecar_name: str | None = None) -> GoldenRef:
        target = self._path_for(sha)
        side = target.with_name(f"{sha}.meta.json")
        return GoldenRef(sha, target, side if side.exists() else None, sidecar_name)

    def is_intact(self, ref: GoldenRef) -> bool:
        """True when the golden copy still exists and still hashes to its name."""
        try:
            return ref.path.is_file() and sha256_file(ref.path) == ref.sha256
        except InputError:
            return False

    def restore(self, ref: GoldenRef, target: str | os.PathLike[str]) -> str:
        """Atomically replace ``target`` (and its sidecar) with the golden copy; return the new sha256."""
        target = Path(target)
        if not self.is_intact(ref):
            raise InputError(f"golden copy {ref.sha256[:12]}… is missing or damaged; cannot restore {target}")
        remove_stale_temp_files(target.parent)
        if ref.sidecar is not None and ref.sidecar_name:
            atomic_copy(ref.sidecar, target.with_name(ref.sidecar_name), mode=0o644)
        atomic_copy(ref.path, target, mode=0o644)
        return sha256_file(target)
