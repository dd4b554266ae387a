"""Progress lines for long operations, shown only on an interactive terminal (never in --json output)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[str, float], None]
LARGE_FILE_BYTES = 8 << 20  # below this an operation is quick enough to need no progress


class TerminalProgress:
    """Callable ``(stage, fraction)`` that redraws one stderr line at most ten times a second."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._stage = ""
        self._drawn = False

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == self._stage and fraction < 1.0 and now - self._last < self.min_interval:
            return
        self._last, self._stage = now, stage
        self.stream.write(f"\r\x1b[K{stage}: {min(max(fraction, 0.0), 1.0) * 100:5.1f}%")
        self.stream.flush()
        self._drawn = True

    def done(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def for_terminal(size_bytes: int, *, quiet: bool = False) -> TerminalProgress | None:
    """A progress printer when stderr is a terminal and the work is large, else None."""
    if quiet or size_bytes < LARGE_FILE_BYTES or not sys.stderr.isatty():
        return None
    return TerminalProgress()
