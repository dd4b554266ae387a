"""Images page speed and pictures (issue 16): the tiled entropy map equals the curve stream's chunked
histogram map, maps are small opaque PNG pictures, the image list is read a page at a time."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from dashboard import data
from dashboard.pictures import (
    base_picture,
    draw_findings,
    entropy_picture,
    magnitude_picture,
    opaque_rgb,
    png_bytes,
)
from dashboard.upload import ENTROPY_TILE, block_entropy_map
from healing.analysis.entropy import entropy_map
from healing.pixelrts import read_image, write_image
from storage import queries
from storage.engine import session_scope
from tests.dashboard.conftest import logged_in_app


def test_tiled_and_curve_stream_entropy_maps_are_identical(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    payload = b"".join([rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes(), bytes(200_000),
                        b"selfheal text " * 30_000, rng.integers(0, 16, 250_000, dtype=np.uint8).tobytes()])
    path = tmp_path / "mixed.rts.png"
    write_image(payload, path)
    image = read_image(str(path))
    tiled = block_entropy_map(image.pixels)
    curve = entropy_map(np.asarray(image.stream), image.grid_size, ENTROPY_TILE * ENTROPY_TILE * 4)
    assert curve.cell == ENTROPY_TILE and tiled.shape == curve.image.shape == (image.grid_size // ENTROPY_TILE,) * 2
    np.testing.assert_allclose(tiled, curve.image, rtol=0, atol=1e-6)
    assert float(tiled.max()) > 7.7 and float(tiled.min()) == 0.0  # random and zero-filled regions both present


def test_pictures_are_opaque_and_findings_are_drawn_where_they_are() -> None:
    pixels = np.zeros((2000, 1000, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = 0  # fully transparent payload must still be seen
    assert opaque_rgb(pixels).shape == (2000, 1000, 3) and int(opaque_rgb(pixels)[0, 0, 0]) == 200
    base, scale = base_picture(pixels, max_side=800)
    assert base.shape == (800, 400, 3) and scale == 0.4
    drawn = draw_findings(base, scale, [{"severity": "high", "region": [500, 1000, 250, 250]}, {"severity": "low"}])
    assert tuple(drawn[450, 250]) == (200, 0, 0)  # inside the rectangle: untouched
    assert tuple(drawn[450, 200]) in {(229, 57, 53), (255, 255, 255)}  # on its left edge (x 500 · 0.4 = 200)
    assert (drawn != base).any(axis=2).sum() > 4 * 100  # the outline is there
    decoded = np.asarray(PILImage.open(io.BytesIO(png_bytes(drawn))))
    assert decoded.shape == (800, 400, 3) and np.array_equal(decoded, drawn)
    entropy = np.array([[0.0, 8.0], [4.0, 8.0]])
    picture = entropy_picture(entropy, max_side=800)
    assert picture.shape == (800, 800, 3) and tuple(picture[0, 0]) != tuple(picture[0, 799])
    grey = magnitude_picture(np.linspace(0, 10, 5000 * 10).reshape(5000, 10), max_side=800)
    assert grey.shape == (800, 2, 3)


@pytest.mark.slow
def test_the_pictures_of_a_64_mib_image_stay_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "big.rts.png"
    write_image(rng.integers(0, 256, 60 << 20, dtype=np.uint8).tobytes(), path)
    tracemalloc.start()
    try:
        pixels = read_image(str(path), max_pixels=1 << 26).pixels
        base, scale = base_picture(pixels)
        pictures = [png_bytes(base), png_bytes(entropy_picture(block_entropy_map(pixels)))]
        del pixels
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert base.shape == (800, 800, 3) and scale == 800 / 4096
    assert peak < 400 << 20, f"peak {peak / 1048576:.0f} MiB"
    assert sum(len(p) for p in pictures) < 3 << 20  # vs ~17 MB of Plotly JSON per rerun before


def test_the_image_list_is_paginated_and_a_deep_link_opens_an_image_of_another_page(seeded: dict[str, Any],
                                                                                     tmp_path: Path) -> None:
    with session_scope() as s:
        ids = [queries.upsert_image(s, f"/fleet/node{n:03d}/disk.rts.png", name=None, actor="test")["id"]
               for n in range(120)]
    frame, total = data.images_page(offset=100, limit=50)
    assert total == 121 and len(frame) == 21
    at = logged_in_app("views/images.py")
    assert len(at.dataframe[0].value) == 50
    assert any(c.value == "121 image(s) match; page 1 of 3, by path." for c in at.caption)
    at.text_input(key="image-contains").set_value("node11").run()
    assert list(at.dataframe[0].value["Name"]) == ["disk.rts.png"] * 10
    at.text_input(key="image-contains").set_value("").run()
    at.query_params["image"] = str(ids[-1])
    at.run()
    assert at.selectbox(key="image-select").value == ids[-1]
    assert "/fleet/node119/disk.rts.png" in [c.value.replace("\\", "") for c in at.caption]
