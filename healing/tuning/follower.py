"""Follow a growing log file across rotation, returning only new complete lines.

Handles the two rotation styles of logrotate:

* **rename + new file** (``create``): the path now names another inode. The rest of the old file is
  read through the still-open handle (or, after a restart, from a sibling that still has the old
  inode, e.g. ``vllm.log.1``), then the new file is read from its start.
* **copytruncate**: same inode, but the file is now shorter than our offset — read from the start.

State is ``(inode, offset)``, where offset is the end of the last *complete* line consumed; a partial
last line stays unread until its newline arrives. :meth:`LogFollower.state` / ``state=`` let the
worker persist it between runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from healing.tuning.observer import MAX_LINE_CHARS


@dataclass(frozen=True)
class FollowerState:
    inode: int | None
    offset: int

    def to_dict(self) -> dict[str, int | None]:
        return {"inode": self.inode, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict[str, int | None]) -> FollowerState:
        return cls(inode=data.get("inode"), offset=int(data.get("offset") or 0))


class LogFollower:
    """``read_new_lines()`` returns the complete lines appended since the previous call.

    ``start_at_end=True`` skips what the file already holds on the first call (follow from now on).
    At most ``max_bytes`` are read per call so one call never holds a huge log in memory; the rest
    comes on the next call. Lines longer than ``max_line_bytes`` are cut into pieces.
    """

    def __init__(self, path: str | os.PathLike[str], *, start_at_end: bool = False, state: FollowerState | None = None,
                 max_bytes: int = 8 << 20, max_line_bytes: int = MAX_LINE_CHARS * 4) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self._fh: BinaryIO | None = None
        self._inode: int | None = state.inode if state else None
        self._offset: int = state.offset if state else 0
        self._start_at_end = start_at_end and state is None

    @property
    def state(self) -> FollowerState:
        return FollowerState(self._inode, self._offset)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_new_lines(self) -> list[str]:
        """New complete lines (decoded with replacement, without line endings); [] when the file is missing."""
        lines: list[str] = []
        try:
            st = os.stat(self.path)
        except OSError:
            return lines  # rotated away and not yet recreated: keep the state, try again later
        if self._inode is not None and st.st_ino != self._inode:
            lines += self._drain_old()
            self._inode, self._offset = None, 0
        if self._fh is None or self._inode is None:
            self._open(st)
        elif st.st_size < self._offset:
            self._offset = 0  # copytruncate: same inode, shorter file
        if self._start_at_end:
            self._offset = st.st_size
            self._start_at_end = False
            return lines
        lines += self._read(final=False)
        return lines

    # ----------------------------------------------------------------- internals
    def _open(self, st: os.stat_result) -> None:
        self.close()
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open on purpose to survive a rename
        except OSError:
            return
        new_ino = os.fstat(fh.fileno()).st_ino
        if self._inode is not None and new_ino != self._inode:
            self._offset = 0
        self._fh, self._inode = fh, new_ino
        if os.fstat(fh.fileno()).st_size < self._offset:
            self._offset = 0

    def _drain_old(self) -> list[str]:
        """The rest of the rotated-away file: through our open handle, or a sibling with the old inode."""
        if self._fh is None:
            sibling = self._find_sibling(self._inode)
            if sibling is None:
                return []
            try:
                self._fh = open(sibling, "rb")  # noqa: SIM115
            except OSError:
                return []
        try:
            return self._read(final=True, limit=None)
        finally:
            self.close()

    def _find_sibling(self, inode: int | None) -> Path | None:
        if inode is None:
            return None
        try:
            for cand in self.path.parent.glob(self.path.name + "*"):
                if cand != self.path and cand.stat().st_ino == inode:
                    return cand
        except OSError:
            return None
        return None

    def _read(self, final: bool, limit: int | None = -1) -> list[str]:
        if self._fh is None:
            return []
        cap = self.max_bytes if limit == -1 else None
        self._fh.seek(self._offset)
        data = self._fh.read(cap) if cap else self._fh.read()
        if not data:
            return []
        last_nl = data.rfind(b"\n")
        if last_nl != -1:
            # the common case at C speed (a log written at 100 MB/s stays followed): whole lines, none
            # overlong — a line of at most max_line_bytes/4 characters cannot exceed max_line_bytes bytes
            block = data[: last_nl + 1]
            text = block.decode("utf-8", errors="replace")
            lines = text.split("\n")[:-1]
            if max(map(len, lines)) * 4 <= self.max_line_bytes or max(len(x.encode()) for x in lines) <= self.max_line_bytes:
                if "\r" in text:
                    lines = [line.rstrip("\r") for line in lines]
                self._offset += len(block)
                return lines + self._split(data[last_nl + 1:], final)
        return self._split(data, final)

    def _split(self, data: bytes, final: bool) -> list[str]:
        """Lines of ``data`` with overlong ones cut into pieces; an incomplete last line waits unless ``final``."""
        out: list[str] = []
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos, pos + self.max_line_bytes)
            if nl == -1:
                end = min(len(data), pos + self.max_line_bytes)
                if end - pos < self.max_line_bytes and not final:
                    break  # an incomplete last line: wait for its newline
                out.append(data[pos:end].decode("utf-8", errors="replace").rstrip("\r"))
                pos = end
                continue
            out.append(data[pos:nl].decode("utf-8", errors="replace").rstrip("\r"))
            pos = nl + 1
        self._offset += pos
        return out
