"""Byte ranges of the curve-ordered stream ↔ pixel regions of an n×n PixelRTS grid."""

from __future__ import annotations

import numpy as np

Region = tuple[int, int, int, int]  # x, y, w, h


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged [start, end) ranges (touching or overlapping ranges become one)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def blocks_to_ranges(indices: np.ndarray, block_size: int, limit: int) -> list[tuple[int, int]]:
    """Merged byte ranges of the blocks ``indices`` (adjacent blocks merged), clipped at ``limit``."""
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.concatenate(([0], breaks))]
    ends = idx[np.concatenate((breaks - 1, [idx.size - 1]))] + 1
    return [(int(s) * block_size, min(int(e) * block_size, limit)) for s, e in zip(starts, ends, strict=True)]


def range_region(byte_range: tuple[int, int], grid_size: int) -> Region:
    """Bounding box (x, y, w, h) of the pixels holding stream bytes [start, end) of an n×n grid."""
    from healing.pixelrts import linear_table

    start, end = byte_range
    first, last = start // 4, max(start // 4 + 1, -(-end // 4))
    last = min(last, grid_size * grid_size)
    flat = linear_table(grid_size)[first:last]
    xs, ys = flat % grid_size, flat // grid_size
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1
