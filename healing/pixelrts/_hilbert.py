"""Hilbert-curve tables, vectorised and cached per order.

The curve is the classic iterative ``d2xy`` (see PIXELRTS_V2.md §1). Rather than running that loop
for every index, the table of order k is assembled from the table of order k-1: the top two bits of
an index pick a quadrant and the remaining bits follow the half-size curve, transformed as ``d2xy``
transforms it in its last iteration (s = n/2):

    quadrant 0: (y', x')            quadrant 1: (x', y' + s)
    quadrant 2: (x' + s, y' + s)    quadrant 3: (2s - 1 - y', s - 1 - x')

so building an n×n table costs O(n²) array work and no Python loop per pixel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

_MAX_CACHED = 4  # a 4096² table is 64 MiB; keep a few orders, drop the least recently used
# Tables this large are also kept on disk and memory-mapped: a fresh process (every `selfheal check`)
# then maps a 64 MiB table from the page cache instead of building it (first-touch page faults make a
# cold build several times slower than a warm one).
_DISK_CACHE_MIN = 1024
_cache: OrderedDict[int, np.ndarray] = OrderedDict()
_inverse_cache: OrderedDict[int, np.ndarray] = OrderedDict()
_lock = threading.Lock()


def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def curve_xy(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) arrays (uint16/uint32) of the curve positions 0..n²-1 for an n×n grid."""
    if not is_power_of_two(n):
        raise ValueError(f"grid size must be a power of two, got {n}")
    dtype = np.uint16 if n <= 65536 else np.uint32
    xs = np.zeros(1, dtype=dtype)
    ys = np.zeros(1, dtype=dtype)
    s = 1
    while s < n:
        m = xs.size
        nx = np.empty(4 * m, dtype=dtype)
        ny = np.empty(4 * m, dtype=dtype)
        nx[:m] = ys
        ny[:m] = xs
        nx[m : 2 * m] = xs
        ny[m : 2 * m] = ys + s
        nx[2 * m : 3 * m] = xs + s
        ny[2 * m : 3 * m] = ys + s
        nx[3 * m :] = (2 * s - 1) - ys
        ny[3 * m :] = (s - 1) - xs
        xs, ys = nx, ny
        s *= 2
    return xs, ys


def _disk_cache_file(n: int) -> Path:
    home = os.environ.get("SELFHEAL_HOME") or str(Path.home() / ".selfheal")
    return Path(home).expanduser() / "cache" / f"hilbert-linear-{n}.npy"


def _spot_check(table: np.ndarray, n: int) -> bool:
    """A cached file must be the right shape and agree with the scalar algorithm at sampled positions."""
    if table.shape != (n * n,) or table.dtype != np.uint32:
        return False
    for i in np.linspace(0, n * n - 1, 97).astype(np.int64).tolist():
        x, y = d2xy(n, i)
        if int(table[i]) != y * n + x:
            return False
    return True


def _digest(table: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(table)).cast("B")).hexdigest()


def _load_or_build(n: int) -> np.ndarray:
    if n < _DISK_CACHE_MIN:
        return _build_linear(n)
    path = _disk_cache_file(n)
    digest_file = path.with_suffix(".sha256")
    with contextlib.suppress(OSError, ValueError):
        mapped = np.load(path, mmap_mode="r")
        # A wrong table would silently misplace every byte, so the whole file is checked (≈40 ms for 64 MiB).
        if _spot_check(mapped, n) and _digest(mapped) == digest_file.read_text().strip():
            return mapped
    table = _build_linear(n)
    with contextlib.suppress(OSError):  # an unwritable home only costs the next process a rebuild
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, write in ((path, lambda fh: np.save(fh, table)),
                              (digest_file, lambda fh: fh.write(_digest(table).encode() + b"\n"))):
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                write(fh)
            os.replace(tmp, target)
    return table


def build_linear_table(n: int) -> np.ndarray:
    """Build the row-major table for an n×n grid from scratch (no caches)."""
    if not is_power_of_two(n):
        raise ValueError(f"grid size must be a power of two, got {n}")
    return _build_linear(n)


def linear_table(n: int) -> np.ndarray:
    """Row-major pixel index (y·n + x) of each curve position, as a read-only uint32 array (cached)."""
    with _lock:
        table = _cache.get(n)
        if table is not None:
            _cache.move_to_end(n)
            return table
    if not is_power_of_two(n):
        raise ValueError(f"grid size must be a power of two, got {n}")
    table = _load_or_build(n)
    if table.flags.writeable:
        table.flags.writeable = False
    with _lock:
        _cache[n] = table
        while len(_cache) > _MAX_CACHED:
            _cache.popitem(last=False)
    return table


def _build_linear(n: int) -> np.ndarray:
    # The last level is written straight into the row-major table (y·n + x) so that the largest
    # arrays are touched as few times as possible.
    if n == 1:
        return np.zeros(1, dtype=np.uint32)
    s = n // 2
    xs, ys = curve_xy(s)
    m = xs.size
    table = np.empty(4 * m, dtype=np.uint32)
    un, us = np.uint32(n), np.uint32(s)
    parts = [table[i * m : (i + 1) * m] for i in range(4)]
    np.multiply(xs, un, out=parts[0], dtype=np.uint32)
    parts[0] += ys
    np.add(ys, us, out=parts[1], dtype=np.uint32)
    parts[1] *= un
    parts[1] += xs
    np.add(parts[1], us, out=parts[2])
    np.subtract(us - 1, xs, out=parts[3], dtype=np.uint32)
    parts[3] *= un
    parts[3] += np.uint32(2 * s - 1)
    parts[3] -= ys
    return table


def curve_index_grid(n: int) -> np.ndarray:
    """n×n uint32 array whose cell (row y, column x) holds the curve position of that pixel (cached)."""
    with _lock:
        grid = _inverse_cache.get(n)
        if grid is not None:
            _inverse_cache.move_to_end(n)
            return grid
    table = linear_table(n)
    flat = np.empty(n * n, dtype=np.uint32)
    flat[table] = np.arange(n * n, dtype=np.uint32)
    grid = flat.reshape(n, n)
    grid.flags.writeable = False
    with _lock:
        _inverse_cache[n] = grid
        while len(_inverse_cache) > _MAX_CACHED:
            _inverse_cache.popitem(last=False)
    return grid


def d2xy(n: int, index: int) -> tuple[int, int]:
    """Scalar reference implementation of the spec's algorithm, for tests and single lookups."""
    x = y = 0
    t = index
    s = 1
    while s < n:
        rx = (t >> 1) & 1
        ry = (t ^ rx) & 1
        if ry == 0:
            if rx == 1:
                x = s - 1 - x
                y = s - 1 - y
            x, y = y, x
        x += s * rx
        y += s * ry
        t >>= 2
        s *= 2
    return x, y
