"""The prefilter: which lines of a big log the Observer has to read at all.

A long vLLM log is almost only steady-state lines (stats, access log). The per-line machinery (prefix
stripping, the catalogue engine) costs microseconds per line; scanning bytes costs nanoseconds. So a log
is read in large chunks and only these lines reach the Observer, with their true line numbers:

* every **start of the service** in full for ``startup_lines`` lines: the file's start and every run
  banner (all startup failures and the context that makes fixes exact — non-default args, KV telemetry,
  graph capture — are printed there);
* around every **anchor** hit (catalogue ``prefilter``: the texts every runtime failure carries — an
  out-of-memory, a warning, a preemption count, a KV usage at the pressure threshold), ``before`` lines
  before and ``after`` lines after (tracebacks, hard-wrapped continuations).

Why anchors and not one alternation of every catalogue keyword: CPython's ``re`` scans an alternation of
the ~50 keywords at ~60 MB/s, GNU ``grep -E`` at ~450 MB/s, while one ``bytes.find`` runs at ~3 GB/s
(measured on a 1 GB log). Memory stays flat: one chunk and a few lines of context are held at a time.

The matcher: all anchors and patterns are compiled into one Hyperscan database (Intel's SIMD
multi-pattern matcher; the ``hyperscan`` wheel bundles the library) and each chunk is scanned once.
Measured on the bench's 1 GB log (`tune observe`, whole process, min of 3 alternated with ``grep -c``
0.27 s and ``wc -l`` 0.13 s): Hyperscan 0.67 s (2.5× grep), ``bytes.find`` per anchor + ``re`` (the
fallback) 1.92 s, google-re2 1.84 s, ahocorasick-rs 1.99 s; pyahocorasick needs ``str`` (4.3 s for the
scan alone). Scan cores alone: reading into the 4 MiB buffer 0.12 s, + Hyperscan 0.35 s; an ``mmap``
instead of the read was slower (0.50 s), chunks of 256 KiB-2 MiB too (Python work per chunk). Without
``hyperscan`` (no wheel for the platform) or for a pattern it cannot compile, the same anchors and
patterns are found with ``bytes.find`` and ``re`` — :func:`_hit_finder` decides, once per build.
Line numbers: in a file of ``NUMPY_FROM_BYTES`` or more, newlines are counted with numpy's SIMD
compare (0.12 s/GB instead of 0.30 s/GB for ``bytes.count``; its import costs ~70 ms, so smaller logs
use ``bytes.count``), in 1 MiB slices so the temporary array stays small.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any, BinaryIO

from healing.tuning.catalogue import catalogue, percent_at_least

try:
    import hyperscan as _hyperscan
except ImportError:  # no wheel for this platform: the pure-Python matcher
    _hyperscan = None
_np: Any = False  # numpy once imported (only for a big file: small logs do not pay for it); None: absent
NUMPY_FROM_BYTES = 384 << 20  # numpy's import (~70 ms, ~19 MB RSS) pays off from about this size on

CHUNK_BYTES = 4 << 20
_NL = b"\n"
_COUNT_SLICE = 1 << 20  # numpy compares this much at a time (a small temporary)

HitFinder = Callable[[bytearray, int], list[int]]  # (buffer, size) → sorted start offsets of the hits


@dataclass(frozen=True)
class Prefilter:
    anchors: tuple[bytes, ...]
    patterns: tuple[re.Pattern[bytes], ...]
    banner: re.Pattern[bytes]
    startup_lines: int
    before: int
    after: int
    max_line_bytes: int
    find_hits: HitFinder = field(compare=False)
    engine: str = "python"  # "hyperscan" or "python": which matcher find_hits uses


def build(kv_pressure_percent: Decimal, max_line_bytes: int) -> Prefilter:
    cfg = catalogue().prefilter
    pct = percent_at_least(kv_pressure_percent).encode()
    patterns = tuple(re.compile(p.encode().replace(b"{PRESSURE}", pct)) for p in cfg["patterns"])
    anchors = tuple(a.encode() for a in cfg["anchors"])
    engine, find_hits = _hit_finder(anchors, tuple(p.pattern for p in patterns))
    return Prefilter(anchors, patterns, re.compile(cfg["banner"].encode()), int(cfg["startup_lines"]),
                     int(cfg["before"]), int(cfg["after"]), max_line_bytes, find_hits, engine)


def _hit_finder(anchors: tuple[bytes, ...], patterns: tuple[bytes, ...]) -> tuple[str, HitFinder]:
    """The one place that decides the matcher: Hyperscan when it imports (and compiles), else Python."""
    if _hyperscan is not None:
        try:
            return "hyperscan", _hyperscan_finder(anchors, patterns)
        except _hyperscan.error:  # a pattern Hyperscan cannot compile: the same search in Python
            pass
    return "python", _python_finder(anchors, tuple(re.compile(p) for p in patterns))


def _python_finder(anchors: tuple[bytes, ...], patterns: tuple[re.Pattern[bytes], ...]) -> HitFinder:
    def find_hits(buf: bytearray, size: int) -> list[int]:
        return sorted({i for a in anchors for i in _find_all(buf, a, size)} |
                      {m.start() for p in patterns for m in p.finditer(buf, 0, size)})
    return find_hits


@lru_cache(maxsize=8)
def _hyperscan_db(anchors: tuple[bytes, ...], patterns: tuple[bytes, ...]) -> Any:
    assert _hyperscan is not None
    exprs = [re.escape(a) for a in anchors] + list(patterns)
    db = _hyperscan.Database(mode=_hyperscan.HS_MODE_BLOCK)
    # leftmost start of every match, as re.finditer / bytes.find give it
    db.compile(expressions=exprs, ids=list(range(len(exprs))), elements=len(exprs),
               flags=[_hyperscan.HS_FLAG_SOM_LEFTMOST] * len(exprs))
    return db


def _hyperscan_finder(anchors: tuple[bytes, ...], patterns: tuple[bytes, ...]) -> HitFinder:
    assert _hyperscan is not None
    db = _hyperscan_db(anchors, patterns)
    hs = _hyperscan
    local = threading.local()  # a database may be scanned by several threads at once, a scratch may not

    def find_hits(buf: bytearray, size: int) -> list[int]:
        starts: set[int] = set()

        def on_match(_id: int, start: int, _end: int, _flags: int, _ctx: object) -> None:
            starts.add(start)

        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = hs.Scratch(db)
        db.scan(memoryview(buf)[:size], match_event_handler=on_match, scratch=scratch)
        return sorted(starts)
    return find_hits


def _numpy() -> Any:
    global _np
    if _np is False:
        try:
            import numpy
        except ImportError:
            numpy = None
        _np = numpy
    return _np


def _count_bytes(buf: bytearray, start: int, end: int) -> int:
    return buf.count(_NL, start, end)


def _count_numpy(buf: bytearray, start: int, end: int) -> int:
    """Newlines in ``buf[start:end]`` with numpy's SIMD compare, 1 MiB at a time (a small temporary)."""
    if end - start < 4096:
        return buf.count(_NL, start, end)
    np = _np
    arr = np.frombuffer(buf, np.uint8, end - start, start)
    return sum(int(np.count_nonzero(arr[i:i + _COUNT_SLICE] == 0x0A)) for i in range(0, end - start, _COUNT_SLICE))


def _newline_counter(fh: BinaryIO) -> Callable[[bytearray, int, int], int]:
    """numpy for a file of ``NUMPY_FROM_BYTES`` or more still to read (when numpy imports), else ``bytes.count``."""
    try:
        left = os.fstat(fh.fileno()).st_size - fh.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # not a file (BytesIO: a follower batch)
        left = 0
    return _count_numpy if left >= NUMPY_FROM_BYTES and _numpy() is not None else _count_bytes


def _chunks(fh: BinaryIO, limit: int) -> Iterator[tuple[bytearray, int]]:
    """(buffer, end) chunks of whole lines, read into one reused buffer (no copy of the big chunk): the
    chunk is completed to its next newline; a line longer than ``limit`` keeps its first ``limit`` bytes."""
    buf = bytearray(CHUNK_BYTES + limit + 1)
    view = memoryview(buf)
    while True:
        n = fh.readinto(view[:CHUNK_BYTES])
        if not n:
            return
        if buf[n - 1] != 0x0A:
            rest = fh.readline(limit)
            buf[n:n + len(rest)] = rest
            n += len(rest)
            if not rest.endswith(_NL) and len(rest) == limit:
                while (more := fh.readline(limit)) and not more.endswith(_NL):  # the rest of an overlong line
                    pass
                buf[n] = 0x0A
                n += 1
        yield buf, n


def scan(fh: BinaryIO, pf: Prefilter) -> Iterator[tuple[int, bytes]]:
    """(line number, line bytes without its newline) of every line the Observer must read, in order."""
    first = 1  # number of the first line of the current chunk
    emit_until = pf.startup_lines  # lines up to this number are read in full (the file's start)
    last = 0  # the last line number yielded
    tail: deque[tuple[int, bytes]] = deque(maxlen=pf.before)  # the previous chunk's last lines
    count_newlines = _newline_counter(fh)
    for buf, size in _chunks(fh, pf.max_line_bytes):
        hits = pf.find_hits(buf, size)
        # (first line number, its offset, last line number) of each stretch to read
        stretches: list[tuple[int, int, int]] = []
        if emit_until >= first:
            stretches.append((first, 0, emit_until))
        line, off = first, 0
        for pos in hits:
            line += count_newlines(buf, off, pos)
            off = pos
            start = buf.rfind(_NL, 0, pos) + 1
            end = buf.find(_NL, pos, size)
            until = line + (pf.startup_lines if pf.banner.search(buf, start, end if end != -1 else size) else pf.after)
            back, boff = line, start
            while back > first and line - back < pf.before:  # a few lines of context before the hit
                boff = buf.rfind(_NL, 0, boff - 1) + 1
                back -= 1
            if back == first and line - back < pf.before:  # and from the previous chunk
                for n, text in tail:
                    if n > last and n >= line - pf.before:
                        last = n
                        yield n, text[: pf.max_line_bytes]
            stretches.append((back, boff, until))
        for n, text in _read_stretches(buf, size, stretches, last):
            last = n
            yield n, text[: pf.max_line_bytes]
        emit_until = max([emit_until] + [s[2] for s in stretches])
        count = line - first + count_newlines(buf, off, size) + (0 if buf[size - 1] == 0x0A else 1)
        tail.clear()
        tail.extend(_last_lines(buf, size, first + count - 1, pf.before))
        first += count


def _find_all(buf: bytearray, needle: bytes, size: int) -> Iterator[int]:
    i = buf.find(needle, 0, size)
    while i != -1:
        yield i
        i = buf.find(needle, i + 1, size)


def _read_stretches(buf: bytearray, size: int, stretches: list[tuple[int, int, int]], last: int) -> Iterator[tuple[int, bytes]]:
    line, off = 0, 0  # the next line to read and its offset; 0 = none yet
    for start, soff, until in sorted(stretches):
        if until <= last:
            continue
        if start > line or line == 0:
            line, off = start, soff
        while line <= until and off < size:
            end = buf.find(_NL, off, size)
            if end == -1:
                end = size
            if line > last:
                last = line
                yield line, bytes(buf[off:end])
            line, off = line + 1, end + 1


def _last_lines(buf: bytearray, size: int, last_number: int, n: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    end = size - 1 if buf[size - 1] == 0x0A else size
    number = last_number
    while len(out) < n and end > 0:
        start = buf.rfind(_NL, 0, end) + 1
        out.append((number, bytes(buf[start:end])))
        number -= 1
        end = start - 1
    return out[::-1]
