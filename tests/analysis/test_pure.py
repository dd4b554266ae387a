"""Pure analysis functions with exact expected values."""

from __future__ import annotations

import numpy as np
import pytest

from healing.analysis import (
    analyze_fourier,
    anomaly_score,
    block_entropy,
    canny_edges,
    dbscan,
    detect_clusters,
    entropy_band,
    entropy_heatmap,
    entropy_map,
    range_region,
    sobel_edges,
)
from healing.analysis.anomaly import AnomalyModel
from healing.analysis.entropy import cell_size
from healing.pixelrts import curve_index_grid


def test_block_entropy_exact_values() -> None:
    zeros = np.zeros(4096, np.uint8)
    uniform = np.tile(np.arange(256, dtype=np.uint8), 16)
    two = np.repeat(np.array([7, 9], np.uint8), 2048)
    stream = np.concatenate([zeros, uniform, two, uniform[:100]])
    ent = block_entropy(stream, 4096)
    assert ent.tolist()[:3] == [0.0, 8.0, 1.0]
    assert ent[3] == pytest.approx(np.log2(100))  # 100 distinct bytes in a short last block
    assert [entropy_band(v) for v in (0.0, 2.0, 4.5, 6.0, 7.9)] == ["zeros", "low", "text", "code", "compressed"]


def test_block_entropy_matches_a_per_block_reference() -> None:
    rng = np.random.default_rng(3)
    stream = (rng.integers(0, 8, 64 * 1000) * rng.integers(1, 30, 64 * 1000)).astype(np.uint8)
    ent = block_entropy(stream, 1000)
    for i in (0, 17, 63):
        counts = np.bincount(stream[i * 1000 : (i + 1) * 1000], minlength=256)
        p = counts[counts > 0] / 1000
        assert ent[i] == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-12)


def test_entropy_map_places_each_block_on_its_hilbert_cells() -> None:
    n, block = 64, 4096  # 1024 curve positions per block: 32×32 cells, 4 blocks
    stream = np.zeros(4 * n * n, np.uint8)
    stream[block : 2 * block] = np.tile(np.arange(256, dtype=np.uint8), 16)  # block 1 = 8 bits
    emap = entropy_map(stream, n, block)
    assert emap.cell == 32 and emap.image.shape == (2, 2)
    grid = curve_index_grid(n)
    for cy in range(2):
        for cx in range(2):
            expected = 8.0 if grid[cy * 32, cx * 32] // 1024 == 1 else 0.0
            assert emap.image[cy, cx] == expected
    assert emap.stats["mean"] == 2.0 and emap.stats["max"] == 8.0 and emap.stats["bands"]["zeros"] == 0.75


def test_cell_size_and_odd_block_sizes() -> None:
    assert cell_size(4096, 4096) == 32
    assert cell_size(4096, 8192) == 32  # 2048 positions: 32×32 cells, two per block
    assert cell_size(64, 4100) == 1  # 1025 positions: per-pixel map
    n = 16
    stream = np.arange(4 * n * n, dtype=np.uint32).astype(np.uint8)
    emap = entropy_map(stream, n, 100)
    grid = curve_index_grid(n)
    assert emap.image.shape == (16, 16)
    assert emap.image[5, 7] == pytest.approx(emap.blocks[grid[5, 7] * 4 // 100])


def test_range_region_is_the_bounding_box_of_the_curve_positions() -> None:
    # n=4: positions 0..3 are (0,0) (1,0) (1,1) (0,1) → bytes [0, 16) cover the 2×2 top-left square
    assert range_region((0, 16), 4) == (0, 0, 2, 2)
    assert range_region((16, 20), 4) == (0, 2, 1, 1)  # position 4 is (0, 2)
    assert range_region((0, 64), 4) == (0, 0, 4, 4)


def test_sobel_on_a_step_image_counts_two_columns() -> None:
    image = np.zeros((64, 64), np.uint8)
    image[:, 32:] = 255
    result = sobel_edges(image)
    assert result.edge_count == 128 and result.edge_density == 128 / 4096
    assert {e["x"] for e in result.strong_edges} == {31.0, 32.0}
    assert result.strong_edges[0]["magnitude"] == 1020.0
    assert result.gradient["max"] == 1020.0
    assert sobel_edges(image, threshold=2000).edge_count == 0
    assert sobel_edges(np.full((16, 16), 9, np.uint8)).edge_count == 0


def test_canny_on_a_step_image() -> None:
    image = np.zeros((64, 64), np.uint8)
    image[:, 32:] = 255
    result = canny_edges(image, 50, 150)
    assert result.edge_count == 64  # one thin line after non-maximum suppression
    assert result.strong_edges_count == 64
    with pytest.raises(ValueError):
        canny_edges(image, 100, 50)


def test_fourier_finds_the_period_of_stripes() -> None:
    x = np.arange(128)
    stripes = np.tile(((np.sin(2 * np.pi * x / 8) + 1) * 127.5).astype(np.uint8), (128, 1))
    result = analyze_fourier(stripes, max_frequencies=3)
    assert result.dominant_frequency == (0.125, 0.0)
    assert result.dominant_period == 8.0
    assert result.has_periodic_patterns is True
    assert result.periodic_regions[0]["period"] == 8.0
    assert result.dc_radius == 3  # 2 % of 128, rounded
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    assert analyze_fourier(noise).has_periodic_patterns is False


def test_dbscan_matches_scikit_learn() -> None:
    from sklearn.cluster import DBSCAN

    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 1, (80, 2)), rng.normal(10, 1, (60, 2)), rng.uniform(-20, 30, (30, 2))])
    labels, core = dbscan(points, 1.5, 5)
    reference = DBSCAN(eps=1.5, min_samples=5).fit(points)
    assert np.array_equal(core, np.isin(np.arange(len(points)), reference.core_sample_indices_))
    assert np.array_equal(labels == -1, reference.labels_ == -1)
    # Same partition of the core points (label numbers may differ).
    pairs = set(zip(labels[core].tolist(), reference.labels_[core].tolist(), strict=True))
    assert len(pairs) == len(set(labels[core].tolist())) == len(set(reference.labels_[core].tolist()))


def test_clusters_on_two_blobs_with_bounded_sample() -> None:
    image = np.zeros((200, 200), np.uint8)
    image[20:40, 20:40] = 255
    image[150:180, 120:170] = 255
    result = detect_clusters(image, eps=3.0, min_samples=4, feature_type="position")
    assert result.num_clusters == 2 and result.noise_points == 0
    boxes = sorted(r["region"] for r in result.regions_of_interest)
    assert boxes == [[19, 19, 22, 22], [119, 149, 52, 32]]
    colours = detect_clusters(np.random.default_rng(0).integers(0, 256, (300, 300, 4), dtype=np.uint8),
                              eps=10, min_samples=5, feature_type="color", max_samples=500)
    assert colours.sample_size == 500
    with pytest.raises(ValueError):
        detect_clusters(image, feature_type="shape")


def test_anomaly_score_noisy_or() -> None:
    model = AnomalyModel()
    assert anomaly_score(np.zeros(100), model) == 0.0
    assert anomaly_score(np.array([10.0]), model) == pytest.approx(0.35)
    assert anomaly_score(np.array([10.0, -10.0, 6.0]), model) == pytest.approx(1 - 0.65**3)
    assert anomaly_score(np.array([4.5]), model) == pytest.approx(0.175)


def test_heatmap_uses_the_colormap_range() -> None:
    image = entropy_heatmap(np.array([[0.0, 8.0]]), (4, 2), "gray")
    assert image.shape == (2, 4, 3)
    assert image[0, 0].tolist() == [0, 0, 0] and image[0, 3].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="unknown colormap"):
        entropy_heatmap(np.zeros((2, 2)), (2, 2), "nope")
