"""Reading and writing files an attacker may have swapped: only regular files are read, nothing is
written through a symlink, and every failure is one line.

Opening with ``O_NONBLOCK`` means a FIFO cannot block the open itself; ``fstat`` on the opened
descriptor then decides (no race between a check and the open). ``O_NOFOLLOW`` refuses a symlink in
the last path component where the caller asks for it (registered images, quarantine sources).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO

from healing.errors import InputError, SelfHealError

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
}


class WriteError(SelfHealError):
    """A file could not be written (disk full, read-only, name too long, symlink refused): exit 3."""


def kind_of(mode: int) -> str:
    """A short human name for the file type in ``mode`` ("a regular file", "a FIFO", …)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def describe_oserror(exc: OSError) -> str:
    """One operator-facing phrase for an OSError (no errno numbers, no paths repeated)."""
    names = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.ENAMETOOLONG: "file name too long",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ELOOP: "is a symbolic link (refused)",
        errno.ENOENT: "no such file",
        errno.EISDIR: "is a directory",
        errno.ENOTDIR: "a parent is not a directory",
        errno.EEXIST: "already exists",
        errno.ENXIO: "no reader on the other end",
    }
    return names.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()


def lstat_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of ``path`` itself (a symlink is reported as one), or None when it does not exist."""
    try:
        return kind_of(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


@contextmanager
def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True,
                 what: str = "a regular file") -> Iterator[BinaryIO]:
    """Open ``path`` for reading only if it is a regular file; anything else is one InputError line.

    Never blocks on a FIFO and never reads a device. ``follow_symlinks=False`` refuses a symlink too.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise InputError(f"{path}: is a symbolic link, not {what} (refused)") from None
        if exc.errno == errno.EISDIR:
            raise InputError(f"{path}: is a directory, not {what}") from None
        if exc.errno == errno.ENOENT:  # the wording every command has used for a missing file
            raise InputError(f"{path}: no such file") from None
        raise InputError(f"{path}: cannot read ({describe_oserror(exc)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: is {kind_of(st.st_mode)}, not {what}")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        try:
            yield fh
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({describe_oserror(exc)})") from None


def read_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True, max_bytes: int | None = None,
                 what: str = "a regular file", too_big: type[SelfHealError] = InputError) -> bytes:
    """The bytes of the regular file ``path``; more than ``max_bytes`` raises ``too_big`` unread."""
    with open_regular(path, follow_symlinks=follow_symlinks, what=what) as fh:
        if max_bytes is not None:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise too_big(f"{path}: {size} bytes is over the limit of {max_bytes} bytes for {what}")
            data = fh.read(max_bytes + 1)
            if len(data) > max_bytes:  # grew while we read
                raise too_big(f"{path}: more than {max_bytes} bytes, the limit for {what}")
            return data
        return fh.read()


def refuse_symlink(path: str | os.PathLike[str], what: str = "output") -> None:
    """Raise WriteError when ``path`` exists as a symlink or as anything but a regular file."""
    try:
        kind = lstat_kind(path)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {describe_oserror(exc)}") from None
    if kind is not None and kind != "a regular file":
        raise WriteError(f"{path}: {what} path is {kind}; refusing to write there")


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644,
                 what: str = "output") -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename, dir fsync).

    An existing symlink (or FIFO, device, directory) at ``path`` is refused; the rename replaces the
    directory entry itself, so nothing is ever written through a link. Errors are one WriteError line.
    """
    path = Path(path)
    refuse_symlink(path, what)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    directory = path.parent if str(path.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_directory(directory)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {describe_oserror(exc)}") from None
    finally:
        if tmp is not None:
            with _ignore_oserror():
                os.unlink(tmp)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename in it survives power loss (best effort where unsupported).

    Inside deferred_directory_fsyncs the fsync is left to that batch's flush (each directory once)."""
    batch = _DEFERRED.get()
    if batch is not None:
        batch.add(directory)
        return
    _fsync_directory_now(directory)


def _fsync_directory_now(directory: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DirectorySyncs:
    """The directories whose fsync a batch of atomic writes has deferred (see deferred_directory_fsyncs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: set[str] = set()

    def add(self, directory: str | os.PathLike[str]) -> None:
        with self._lock:
            self._dirs.add(os.fspath(directory))

    def flush(self) -> int:
        """fsync every directory added since the last flush, once each; returns how many."""
        with self._lock:
            dirs, self._dirs = self._dirs, set()
        for directory in sorted(dirs):
            _fsync_directory_now(directory)
        return len(dirs)


_DEFERRED: ContextVar[DirectorySyncs | None] = ContextVar("selfheal_deferred_directory_fsyncs", default=None)


@contextmanager
def deferred_directory_fsyncs() -> Iterator[DirectorySyncs]:
    """Within this block (and in threads that run a contextvars.copy_context() taken inside it),
    fsync_directory only notes the directory; ``flush()`` then syncs each noted directory once, and the
    block's end flushes what is left.

    Each file is still fsynced before its rename, so a crash can lose only renames not yet flushed: the
    file is then absent (never empty or partial). A caller must flush before it records anything that
    refers to those files (register_many flushes before each batch's transaction): many images written
    into a few hundred content-addressed directories then cost one fsync per directory, not one per file."""
    batch = DirectorySyncs()
    token = _DEFERRED.set(batch)
    try:
        yield batch
    finally:
        _DEFERRED.reset(token)
        batch.flush()


@contextmanager
def _ignore_oserror() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass
