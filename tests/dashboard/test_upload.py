"""Server-side upload handling of the Analyze page: limits, damaged files, vision allow-list, JSON report."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from dashboard.upload import (
    DISPLAY_MAX,
    UploadRefused,
    analyze_upload,
    block_entropy_map,
    block_means,
    display_cell,
    edge_magnitude,
    fourier_spectrum,
    safe_filename,
)
from healing.config import load_settings
from healing.pixelrts import encode


def _png(payload: bytes = bytes(range(256)) * 64) -> bytes:
    return encode(payload).png


def _settings(tmp_path: Path, text: str = ""):  # type: ignore[no-untyped-def]
    config = tmp_path / "c.yaml"
    config.write_text(text)
    return load_settings(config)


def test_healthy_upload_report(tmp_path: Path) -> None:
    result = analyze_upload("../../etc/boot image.rts.png", _png(), _settings(tmp_path))
    assert result.filename == "boot_image.rts.png"
    assert result.status == "healthy"
    assert result.check["metrics"]["hash_verified"] is True
    assert result.integrity["valid"] is True and result.integrity["data_size"] == 16384
    assert set(result.maps) == {"entropy", "edges", "fourier", "clusters"}
    report = json.loads(json.dumps(result.report()))
    assert report["file"]["size"] == len(_png())
    # the engine's numbers (as `selfheal analyze --method all`): 16 KiB of random data = 4 blocks of 4 KiB
    analyses = report["analyses"]
    assert set(analyses) >= {"entropy", "edges", "fourier", "clusters", "display_maps"}
    assert (analyses["entropy"]["block_size"], analyses["entropy"]["blocks"]) == (4096, 4)
    assert analyses["entropy"]["bands"]["compressed"] == 1.0 and analyses["image_path"] == "boot_image.rts.png"
    assert analyses["display_maps"]["entropy"]["tile"] == 16
    assert report["check"]["image_path"] == "boot_image.rts.png"


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        out.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big") for kind, body in chunks)


def test_damaged_payload_is_critical(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64
    damaged = bytearray(payload)
    damaged[100:110] = b"\xff" * 10
    original, other = _chunks(_png(payload)), _chunks(_png(bytes(damaged)))
    text = {b"tEXt", b"iTXt", b"zTXt"}
    # The damaged pixels under the original metadata: what bit rot inside the image data looks like.
    forged = _assemble([c for c in other if c[0] not in text and c[0] != b"IEND"]
                       + [c for c in original if c[0] in text] + [(b"IEND", b"")])
    result = analyze_upload("forged.rts.png", forged, _settings(tmp_path))
    assert result.status == "critical"
    assert result.check["metrics"]["hash_verified"] is False
    assert any(f["category"] == "corruption" for f in result.findings)


def test_truncated_png_is_reported_not_raised(tmp_path: Path) -> None:
    png = _png()
    result = analyze_upload("cut.rts.png", png[: len(png) // 2], _settings(tmp_path))
    assert result.status in ("critical", "unknown")
    assert result.error


def test_size_limit_is_enforced_on_the_server(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "dashboard:\n  max_upload_mb: 1\n")
    big = b"\x89PNG\r\n\x1a\n" + bytes(1024 * 1024)
    with pytest.raises(UploadRefused, match=r"the file is 1\.0 MiB; uploads are limited to 1 MiB"):
        analyze_upload("big.png", big, settings)


def test_declared_dimensions_are_refused_from_the_header(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "dashboard:\n  max_upload_pixels: 4096\n")
    with pytest.raises(UploadRefused, match=r"^the image is 256×256 = 65,536 pixels; the dashboard analyses at most "
                                            r"4,096 pixels \(dashboard\.max_upload_pixels\)$"):
        analyze_upload("wide.rts.png", _png(bytes(70_000)), settings)


def test_a_png_bomb_header_is_refused_before_decoding(tmp_path: Path) -> None:
    # IHDR claims 100000×100000 pixels; the codec refuses it from the header alone.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = (100_000).to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(UploadRefused, match=r"^the image is 100000×100000 = 10,000,000,000 pixels; the dashboard "
                                            r"analyses at most 16,777,216 pixels \(dashboard\.max_upload_pixels\)$"):
        analyze_upload("bomb.png", bomb, _settings(tmp_path))


def test_not_a_png_and_empty(tmp_path: Path) -> None:
    with pytest.raises(UploadRefused, match="not a PNG file"):
        analyze_upload("x.png", b"GIF89a", _settings(tmp_path))
    with pytest.raises(UploadRefused, match="the file is empty"):
        analyze_upload("x.png", b"", _settings(tmp_path))


def test_vision_model_only_from_the_allow_list(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(UploadRefused, match="vision model 'openai' is not allowed for uploads"):
        analyze_upload("a.rts.png", _png(), settings, model="openai")
    with pytest.raises(UploadRefused, match="uploads may name a vision model, not a URL"):
        analyze_upload("a.rts.png", _png(), settings, model="http://evil.example/v1")
    result = analyze_upload("a.rts.png", _png(), settings, model="statistical")
    assert [v["provider"] for v in result.vision] == ["statistical"]
    assert result.report()["vision"][0]["ok"] is True


def test_block_entropy_map_values() -> None:
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[:16, 16:] = np.arange(1024, dtype=np.uint32).reshape(16, 16, 4).astype(np.uint8)  # 256 values × 4 each
    entropy = block_entropy_map(pixels)
    assert entropy.shape == (2, 2)
    assert entropy[0, 0] == 0.0 and entropy[1, 1] == 0.0
    assert entropy[0, 1] == pytest.approx(8.0)


def test_display_maps_are_drawn_from_a_bounded_picture() -> None:
    """A 4096² upload: edge and Fourier maps come from the 1024² area-reduced picture (the full-size
    float maps took 1.3 GB), and the axes still read in image pixels."""
    pixels = np.zeros((4096, 4096, 4), dtype=np.uint8)
    pixels[:, 2048:, :3] = 255  # one vertical edge in the middle
    edges = edge_magnitude(pixels)
    assert edges.shape == (DISPLAY_MAX, DISPLAY_MAX) and edges.dtype == np.float32
    assert np.flatnonzero(edges.max(axis=0)).tolist() == [511, 512]  # the edge, at x 2048 / 4
    assert fourier_spectrum(pixels).shape == (DISPLAY_MAX, DISPLAY_MAX)
    assert display_cell(pixels, edges) == (4.0, 4.0)
    small = np.zeros((40, 24, 4), dtype=np.uint8)
    assert edge_magnitude(small).shape == (40, 24) and display_cell(small, edge_magnitude(small)) == (1.0, 1.0)


def test_block_means_match_a_whole_image_mean() -> None:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (70, 50, 4), dtype=np.uint8)  # edge tiles cropped: 4 × 3 tiles of 16²
    expected = pixels[:64, :48].reshape(4, 16, 3, 16, 4).mean(axis=(1, 3, 4))
    assert np.allclose(block_means(pixels, 4, 3), expected)


def test_safe_filename() -> None:
    assert safe_filename("..\\x/../.hidden.rts.png") == "hidden.rts.png"
    assert safe_filename("") == "upload.png"
    assert safe_filename("a b;c.png") == "a_b_c.png"
