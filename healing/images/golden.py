"""Content-addressed golden copies and the atomic restore that heals an image from one.

A golden copy is stored once per content hash under ``$SELFHEAL_HOME/golden/<aa>/<sha256>.rts.png``
(plus its sidecar, if the image had one), owner read-only (0400) in 0700 directories. Restoring writes
a temporary file in the target's own directory (created ``O_EXCL|O_NOFOLLOW``, so a planted symlink is
never written through), fsyncs it, ``os.replace``s it over the target (replacing a symlink at the
target itself, not what it points to) and fsyncs the directory: a crash at any moment leaves either
the old file or the complete restored one, never a mixture.

Temporary files are named ``.selfheal-restore-<pid>-<token>-<name>``: a file whose process is gone is
stale and ``remove_stale_temp_files`` deletes it; this process's own live temporaries are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from healing.errors import InputError
from healing.procs import pid_alive
from healing.safeio import WriteError, describe_oserror, fsync_directory, open_regular, read_regular

_BUF = 1 << 20
TMP_MARK = ".selfheal-restore-"
_TMP_PID = re.compile(re.escape(TMP_MARK) + r"(\d+)-")
FILE_MODE = 0o400  # golden and quarantine copies: owner read-only
DIR_MODE = 0o700

_live_temps: set[str] = set()  # this process's temporaries in flight (never "stale")
_live_lock = threading.Lock()


def sha256_file(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> str:
    """sha256 of a regular file, streamed (``hashlib.file_digest`` releases the GIL). A FIFO, device or
    (with ``follow_symlinks=False``) symlink is a one-line InputError, never a hang."""
    with open_regular(path, follow_symlinks=follow_symlinks) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def private_dir(directory: Path) -> Path:
    """Create ``directory`` (and parents) and make it 0700: quarantined and golden content is private."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        if directory.stat().st_mode & 0o077:
            os.chmod(directory, DIR_MODE)
    except OSError as exc:
        raise WriteError(f"cannot create {directory}: {describe_oserror(exc)}") from None
    return directory


def _temp_path(target: Path) -> Path:
    # The target's name is cut so that a 255-byte name still leaves room for the prefix.
    return target.with_name(f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}-{target.name[:120]}")


@contextlib.contextmanager
def _live(tmp: Path) -> Iterator[None]:
    with _live_lock:
        _live_temps.add(str(tmp))
    try:
        yield
    finally:
        with _live_lock:
            _live_temps.discard(str(tmp))
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _atomic_write(target: Path, chunks: Iterable[bytes], mode: int) -> None:
    """Write ``chunks`` to a fresh temporary file next to ``target`` (``O_EXCL|O_NOFOLLOW``: a planted
    symlink is refused, never written through), fsync, rename over ``target``, fsync the directory."""
    tmp = _temp_path(target)
    with _live(tmp):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise WriteError(f"cannot write {target}: {describe_oserror(exc)}") from None
        try:
            for chunk in chunks:  # a read error of the source surfaces here as the source's own error
                try:
                    _write_all(fd, chunk)
                except OSError as exc:
                    raise WriteError(f"cannot write {target}: {describe_oserror(exc)}") from None
            try:
                os.fchmod(fd, mode)
                os.fsync(fd)
            except OSError as exc:
                raise WriteError(f"cannot write {target}: {describe_oserror(exc)}") from None
        finally:
            os.close(fd)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise WriteError(f"cannot replace {target}: {describe_oserror(exc)}") from None
        fsync_directory(target.parent)


def atomic_copy(source: Path, target: Path, *, mode: int) -> None:
    """Copy the regular file ``source`` (never through a symlink) over ``target`` atomically.

    Read problems are one-line InputErrors, write problems (disk full, read-only, name too long) one-line
    WriteErrors; the temporary file never survives an error."""
    with open_regular(source, follow_symlinks=False) as src:
        _atomic_write(target, iter(lambda: src.read(_BUF), b""), mode)


def atomic_write_bytes(target: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` over ``target`` atomically, as atomic_copy does."""
    _atomic_write(target, [data], mode)


def is_stale_temp(entry: Path) -> bool:
    """True for one of our temporary files whose writer is gone (killed process, or none in flight here)."""
    if not entry.name.startswith(TMP_MARK):
        return False
    match = _TMP_PID.match(entry.name)
    if match is None:
        return True  # the old naming, without a pid: written by an earlier version, long gone
    pid = int(match.group(1))
    if pid == os.getpid():
        with _live_lock:
            return str(entry) not in _live_temps
    return not pid_alive(pid)


def remove_stale_temp_files(directory: Path) -> list[str]:
    """Delete stale temporary files a killed restore or copy left in ``directory``; returns their paths."""
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if is_stale_temp(entry):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(str(entry))
    return removed


def sidecar_of(image: Path) -> Path | None:
    """The image's sidecar if one exists as a regular file (same names the codec reads)."""
    from healing.pixelrts._metadata import sidecar_candidates

    for candidate in sidecar_candidates(image):
        if os.path.isfile(candidate):  # False, not an error, for a name too long to exist
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
        private_dir(self.root)
        private_dir(target.parent)
        if not target.is_file() or sha256_file(target, follow_symlinks=False) != sha:
            atomic_copy(image, target, mode=FILE_MODE)
        side = sidecar_of(image)
        side_target = None
        if side is not None:
            side_target = target.with_name(f"{sha}.meta.json")
            if not side_target.is_file() or read_regular(side_target, follow_symlinks=False) != read_regular(side):
                atomic_copy(side, side_target, mode=FILE_MODE)
        return GoldenRef(sha, target, side_target, side.name if side else None)

    def ref(self, sha: str, sidecar_name: str | None = None) -> GoldenRef:
        target = self._path_for(sha)
        side = target.with_name(f"{sha}.meta.json")
        return GoldenRef(sha, target, side if side.exists() else None, sidecar_name)

    def is_intact(self, ref: GoldenRef) -> bool:
        """True when the golden copy still exists as a regular file and still hashes to its name."""
        try:
            return sha256_file(ref.path, follow_symlinks=False) == ref.sha256
        except InputError:
            return False

    def restore(self, ref: GoldenRef, target: str | os.PathLike[str]) -> str:
        """Atomically replace ``target`` (and its sidecar) with the golden copy; return the new sha256.

        Whatever sits at ``target`` (a damaged file, a symlink, a FIFO) is replaced as a directory entry;
        nothing is written through it."""
        target = Path(target)
        if not self.is_intact(ref):
            raise InputError(f"golden copy {ref.sha256[:12]}… is missing or damaged; cannot restore {target}")
        remove_stale_temp_files(target.parent)
        if ref.sidecar is not None and ref.sidecar_name:
            atomic_copy(ref.sidecar, target.with_name(ref.sidecar_name), mode=0o644)
        atomic_copy(ref.path, target, mode=0o644)
        return sha256_file(target, follow_symlinks=False)
