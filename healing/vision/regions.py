"""Pixel regions → byte ranges along the Hilbert curve (PIXELRTS_V2.md §1).

Byte k of a PixelRTS stream lives in the pixel at curve position k // 4, so a rectangle of pixels
covers the bytes [4·pos, 4·pos + 4) of each of its curve positions. A rectangle is contiguous on
screen but not on the curve; merging adjacent positions gives the handful of byte runs an operator
(or ``decode_range``) can act on.
"""

from __future__ import annotations

import numpy as np

from healing.vision._types import Region


def clamp_region(region: Region, width: int, height: int) -> Region | None:
    """Intersect ``region`` (x, y, w, h) with the image; None when nothing of it lies inside."""
    x, y, w, h = region
    if w <= 0 or h <= 0:
        return None
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def region_byte_ranges(region: Region, grid_size: int) -> tuple[tuple[int, int], ...]:
    """Merged [start, end) byte ranges of the pixels of ``region`` in an n×n PixelRTS grid.

    The region is clamped to the grid first; an empty intersection gives ``()``.
    """
    from healing.pixelrts import curve_index_grid

    clamped = clamp_region(region, grid_size, grid_size)
    if clamped is None:
        return ()
    x, y, w, h = clamped
    block = curve_index_grid(grid_size)[y : y + h, x : x + w]
    if w * h * 8 >= grid_size * grid_size:
        # Large regions: marking positions in a curve-long mask is O(n²) without sorting millions of values.
        mask = np.zeros(grid_size * grid_size + 2, dtype=np.int8)
        mask[block.ravel().astype(np.int64) + 1] = 1
        edges = np.diff(mask)
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
    else:
        positions = np.sort(block, axis=None).astype(np.int64)
        # A new run starts wherever the next curve position is not the previous one plus one.
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts = positions[np.concatenate(([0], breaks))]
        ends = positions[np.concatenate((breaks - 1, [positions.size - 1]))] + 1
    return tuple((4 * int(s), 4 * int(e)) for s, e in zip(starts, ends, strict=True))
