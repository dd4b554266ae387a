"""Regions → byte ranges along the Hilbert curve, checked against PIXELRTS_V2.md §1."""

from __future__ import annotations

import numpy as np
import pytest

from healing.pixelrts import encode, read_image
from healing.vision.regions import clamp_region, region_byte_ranges

# n=4 test vector of PIXELRTS_V2.md §1: curve position i is at (x, y) = N4[i]
N4 = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (0, 3), (1, 3), (1, 2),
      (2, 2), (2, 3), (3, 3), (3, 2), (3, 1), (2, 1), (2, 0), (3, 0)]


def test_test_vector_positions_map_to_their_four_bytes():
    for pos, (x, y) in enumerate(N4):
        assert region_byte_ranges((x, y, 1, 1), 4) == ((4 * pos, 4 * pos + 4),)


def test_rectangles_in_the_4x4_grid():
    assert region_byte_ranges((0, 0, 2, 2), 4) == ((0, 16),)  # positions 0..3
    assert region_byte_ranges((2, 0, 2, 1), 4) == ((56, 64),)  # positions 14, 15
    # positions 2, 7, 8, 13 → three runs
    assert region_byte_ranges((1, 1, 2, 2), 4) == ((8, 12), (28, 36), (52, 56))
    assert region_byte_ranges((0, 0, 4, 4), 4) == ((0, 64),)
    # the bottom row: (0,3)=5 (1,3)=6 (2,3)=9 (3,3)=10
    assert region_byte_ranges((0, 3, 4, 1), 4) == ((20, 28), (36, 44))


def test_regions_are_clamped_to_the_grid():
    assert region_byte_ranges((3, 3, 5, 5), 4) == ((40, 44),)  # only (3,3) = position 10
    assert region_byte_ranges((-1, -1, 2, 2), 4) == ((0, 4),)
    assert region_byte_ranges((4, 0, 1, 1), 4) == ()
    assert region_byte_ranges((0, 0, 0, 3), 4) == ()
    assert clamp_region((-2, 1, 5, 10), 4, 4) == (0, 1, 3, 3)
    assert clamp_region((1, 1, -1, 1), 4, 4) is None


def test_worked_example_bytes_come_back_through_the_codec(tmp_path):
    # PIXELRTS_V2.md §1: 20 bytes 0x01..0x14 in a 4×4 grid; row 1 = [0D 0E 0F 10][09 0A 0B 0C]…
    path = tmp_path / "worked.rts.png"
    path.write_bytes(encode(bytes(range(1, 21)), grid_size=4).png)
    img = read_image(path)
    assert region_byte_ranges((0, 1, 2, 1), 4) == ((8, 16),)  # pixels (0,1)=pos 3, (1,1)=pos 2
    assert bytes(img.stream[8:16]) == bytes(range(9, 17))
    assert img.pixels[1, 0].tolist() == [0x0D, 0x0E, 0x0F, 0x10]
    ranges = region_byte_ranges((0, 2, 1, 1), 4)  # pixel (0,2) = pos 4 holds bytes 16..19
    assert ranges == ((16, 20),)
    assert bytes(img.stream[16:20]) == bytes([0x11, 0x12, 0x13, 0x14])


@pytest.mark.parametrize("n", [8, 16])
def test_ranges_cover_exactly_the_bytes_of_the_region(tmp_path, n):
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, 4 * n * n - 64, dtype=np.uint8).tobytes()
    path = tmp_path / "img.rts.png"
    path.write_bytes(encode(data, grid_size=n, compression_level=0).png)
    img = read_image(path)
    for _ in range(20):
        x, y = (int(v) for v in rng.integers(0, n, 2))
        w, h = (int(v) for v in rng.integers(1, n + 1, 2))
        ranges = region_byte_ranges((x, y, w, h), n)
        from_ranges = np.concatenate([img.stream[a:b] for a, b in ranges])
        from_pixels = img.pixels[y : y + h, x : x + w].reshape(-1)
        assert sorted(from_ranges.tolist()) == sorted(from_pixels.tolist())
        assert all(a < b for a, b in ranges) and all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))


@pytest.mark.parametrize("n", [32, 64])
def test_mask_and_sort_paths_agree(n):
    from healing.pixelrts import curve_index_grid

    rng = np.random.default_rng(3)
    grid = curve_index_grid(n)
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(0, n, 2))
        w, h = (int(v) for v in rng.integers(1, n + 1, 2))
        ranges = region_byte_ranges((x, y, w, h), n)
        expected = set((4 * grid[y : y + h, x : x + w]).ravel().tolist())
        covered = {b for a, e in ranges for b in range(a, e, 4)}
        assert covered == expected


def test_whole_large_grid_is_one_range_and_fast():
    import time

    started = time.perf_counter()
    assert region_byte_ranges((0, 0, 2048, 2048), 2048) == ((0, 4 * 2048 * 2048),)
    assert region_byte_ranges((0, 0, 1024, 2048), 2048) == ((0, 4 * 2048 * 1024),)  # left half = first half of the curve
    assert time.perf_counter() - started < 5.0
