"""Helpers that build clean and damaged images for the analysis tests."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from healing.pixelrts import linear_table, read_image, write_image


def text_bytes(size: int) -> bytes:
    words = b"the quick brown fox jumps over the lazy dog while kernels boot and services start "
    return (words * (size // len(words) + 1))[:size]


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def rewrite_stream(path: Path, edit) -> np.ndarray:
    """Apply ``edit(stream)`` (in place, curve order) to the pixels of ``path`` and rewrite the PNG.

    The PNG is re-encoded without its tEXt chunk; the sidecar written by write_image still carries the
    original metadata, which is what a reader uses first — so only the pixels are damaged.
    """
    image = read_image(path)
    stream = image.stream.copy()
    edit(stream)
    n = image.grid_size
    flat = np.empty((n * n, 4), dtype=np.uint8)
    flat[linear_table(n)] = stream.reshape(-1, 4)
    bgra = cv2.cvtColor(flat.reshape(n, n, 4), cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), bgra)
    return stream


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def replace_text_metadata(path: Path, changes: dict) -> None:
    """Rewrite the embedded PixelRTS tEXt chunk with ``changes`` applied and a valid CRC."""
    raw = path.read_bytes()
    pos, out = 8, [raw[:8]]
    while pos < len(raw):
        length = struct.unpack(">I", raw[pos : pos + 4])[0]
        ctype = raw[pos + 4 : pos + 8]
        body = raw[pos + 8 : pos + 8 + length]
        chunk = raw[pos : pos + 12 + length]
        if ctype == b"tEXt" and b"PixelRTS{" in body:
            key, _, text = body.partition(b"\0")
            meta = json.loads(text[len(b"PixelRTS"):])
            meta.update(changes)
            chunk = png_chunk(b"tEXt", key + b"\0PixelRTS" + json.dumps(meta, separators=(",", ":")).encode())
        out.append(chunk)
        pos += 12 + length
    path.write_bytes(b"".join(out))


@pytest.fixture()
def make_rts(tmp_path: Path):
    def make(data: bytes, name: str = "img.rts.png", **options) -> Path:
        path = tmp_path / name
        write_image(data, path, **options)
        return path

    return make
