import time

import numpy as np
import pytest

from healing.pixelrts import curve_index_grid, d2xy, linear_table
from healing.pixelrts._hilbert import curve_xy

from .spec_writer import spec_d2xy


def test_vectors_n2_and_n4():
    xs, ys = curve_xy(2)
    assert list(zip(xs.tolist(), ys.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 1), (1, 0)]
    xs, ys = curve_xy(4)
    assert list(zip(xs.tolist(), ys.tolist(), strict=True)) == [
        (0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (0, 3), (1, 3), (1, 2),
        (2, 2), (2, 3), (3, 3), (3, 2), (3, 1), (2, 1), (2, 0), (3, 0),
    ]


def test_vectors_n8_and_corners():
    xs, ys = curve_xy(8)
    assert (int(xs[1]), int(ys[1])) == (0, 1)
    assert (int(xs[63]), int(ys[63])) == (7, 0)
    for n in (2, 4, 8, 16, 256):
        xs, ys = curve_xy(n)
        assert (int(xs[0]), int(ys[0])) == (0, 0)
        assert (int(xs[-1]), int(ys[-1])) == (n - 1, 0)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 128])
def test_matches_scalar_spec_algorithm(n):
    xs, ys = curve_xy(n)
    assert [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)] == [spec_d2xy(n, i) for i in range(n * n)]
    assert [d2xy(n, i) for i in range(n * n)] == [spec_d2xy(n, i) for i in range(n * n)]


@pytest.mark.parametrize("n", [1, 2, 64, 512])
def test_linear_table_is_a_permutation_and_inverse_matches(n):
    table = linear_table(n)
    assert table.dtype == np.uint32
    assert np.array_equal(np.sort(table), np.arange(n * n, dtype=np.uint32))
    xs, ys = curve_xy(n)
    assert np.array_equal(table, ys.astype(np.uint32) * n + xs)
    grid = curve_index_grid(n)
    assert np.array_equal(grid.reshape(-1)[table], np.arange(n * n, dtype=np.uint32))


def test_tables_are_cached_and_read_only():
    assert linear_table(256) is linear_table(256)
    with pytest.raises(ValueError):
        linear_table(256)[0] = 1


def test_rejects_non_power_of_two():
    with pytest.raises(ValueError):
        curve_xy(6)


def test_neighbouring_positions_are_adjacent_pixels():
    xs, ys = curve_xy(64)
    steps = np.abs(np.diff(xs.astype(int))) + np.abs(np.diff(ys.astype(int)))
    assert set(steps.tolist()) == {1}


@pytest.mark.slow
def test_4096_table_builds_fast_enough_to_be_vectorised():
    # Sanity bound only (the benchmark measures it): a per-pixel Python loop needs ~45 s.
    import healing.pixelrts._hilbert as h

    h._cache.clear()
    start = time.perf_counter()
    table = linear_table(4096)
    assert time.perf_counter() - start < 5.0
    assert table.size == 4096 * 4096 and int(table[-1]) == 4095


def test_large_tables_are_cached_on_disk_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    import healing.pixelrts._hilbert as h

    monkeypatch.setenv("SELFHEAL_HOME", str(tmp_path))
    h._cache.clear()
    built = np.array(linear_table(1024))
    cached = tmp_path / "cache" / "hilbert-linear-1024.npy"
    assert cached.exists()
    h._cache.clear()
    mapped = linear_table(1024)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, built)
    h._cache.clear()
    broken = np.array(built)
    broken[5000] = 0
    np.save(cached, broken)
    assert np.array_equal(linear_table(1024), built)  # the spot check caught it, the table was rebuilt
    h._cache.clear()
