"""The single-inflate decode of unfiltered RGBA (healing.pixelrts._png.decode_unfiltered/stream_unfiltered and
codec._stream_unfiltered) against PIL and libpng, on PNGs written here from the PNG specification (section 9:
the five filter types, chosen per row), cut into IDAT chunks of random sizes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from healing.errors import CorruptedError
from healing.pixelrts import _png, codec, decode, encode, linear_table, read_image
from healing.pixelrts.codec import decode_plain, read_structure

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_row(kind: int, row: bytes, prior: bytes, bpp: int) -> bytes:
    """One scanline filtered with ``kind`` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth), PNG spec 9.2."""
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prior[i]
        c = prior[i - bpp] if i >= bpp else 0
        predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
        out[i] = (x - predictor) & 0xFF
    return bytes([kind]) + bytes(out)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(ctype)))


def write_png(pixels: np.ndarray, colour: int, filters: list[int], idat_sizes: list[int] | None = None,
              text: bytes | None = None) -> bytes:
    """An 8-bit, non-interlaced PNG of ``pixels`` (h, w, channels) with row r filtered by ``filters[r]``; the
    zlib stream is cut into IDAT chunks of ``idat_sizes`` bytes (cycled), one chunk when None."""
    h, w = pixels.shape[:2]
    bpp = _CHANNELS[colour]
    prior = bytes(w * bpp)
    lines = []
    for r in range(h):
        row = pixels[r].tobytes()
        lines.append(_filter_row(filters[r], row, prior, bpp))
        prior = row
    stream = zlib.compress(b"".join(lines), 6)
    parts = [_png.SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))]
    if text is not None:
        parts.append(_chunk(b"tEXt", text))
    sizes = idat_sizes or [len(stream)]
    pos, k = 0, 0
    while pos < len(stream):
        step = max(1, sizes[k % len(sizes)])
        parts.append(_chunk(b"IDAT", stream[pos : pos + step]))
        pos, k = pos + step, k + 1
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _pil_rgba(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGBA"))


@st.composite
def filtered_images(draw: st.DrawFn) -> tuple[np.ndarray, int, list[int], list[int]]:
    colour = draw(st.sampled_from([6, 6, 6, 2, 0, 4]))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    # Few distinct values, so that neighbouring bytes are often equal (filters then predict well).
    levels = draw(st.sampled_from([2, 7, 256]))
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, levels, (h, w, _CHANNELS[colour])) * (255 // max(1, levels - 1))).astype(np.uint8)
    unfiltered = draw(st.booleans())
    filters = [0] * h if unfiltered else draw(st.lists(st.integers(0, 4), min_size=h, max_size=h))
    sizes = draw(st.lists(st.integers(1, 300), min_size=1, max_size=4))
    return pixels, colour, filters, sizes


@settings(max_examples=300, deadline=None)
@given(filtered_images(), st.sampled_from([1, 5, 64, 4 << 20]))
def test_decode_matches_pil_for_every_filter_choice(case: tuple[np.ndarray, int, list[int], list[int]], step: int) -> None:
    pixels, colour, filters, sizes = case
    png = write_png(pixels, colour, filters, sizes)
    structure = read_structure(png)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_png, "_INFLATE_STEP", step)  # pieces that cut scanlines anywhere
        ours = decode_plain(png, structure)
        direct = _png.decode_unfiltered(png, structure)
    expected = _pil_rgba(png)
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert np.array_equal(ours, expected)
    if colour == 6:
        assert np.array_equal(expected, pixels)
        libpng = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
        assert np.array_equal(ours, libpng)
    # The single-inflate path takes exactly the unfiltered 8-bit RGBA images.
    if colour == 6 and not any(filters):
        assert direct is not None and np.array_equal(direct, pixels)
    else:
        assert direct is None


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([1, 2, 4, 8, 16, 32]), st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 8, 128]),
       st.sampled_from([3, 1000]), st.integers(-1, 31))
def test_curve_gather_by_bands_matches_the_table(n: int, seed: int, block_side: int, step: int, filtered_row: int) -> None:
    """_stream_unfiltered gathers the curve order band by band (any band size) exactly as the whole-image
    table does; a filtered row anywhere (after bands were handed over) sends the image to libpng."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, n, 4), dtype=np.uint8)
    filters = [4 if r == filtered_row else 0 for r in range(n)]
    png = write_png(pixels, 6, filters, [97, 4000])
    structure = read_structure(png)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "_BLOCK_SIDE", block_side)
        mp.setattr(_png, "_INFLATE_STEP", step)
        stream = codec._stream_unfiltered(png, structure, n, codec._noop)
    if 0 <= filtered_row < n:
        assert stream is None
        return
    expected = pixels.reshape(-1, 4)[linear_table(n)].tobytes()
    assert stream is not None and bytes(stream) == expected


@pytest.mark.skipif(not hasattr(cv2, "IMWRITE_PNG_FILTER"), reason="this OpenCV chooses PNG filters itself")
def test_our_encoder_writes_unfiltered_scanlines() -> None:
    # Structured data (text): libpng's adaptive choice would filter most of these rows.
    payload = (Path(codec.__file__).read_bytes() * 4)[: 3 << 16]
    png = encode(payload).png
    structure = read_structure(png)
    body = b"".join(png[pos + 8 : pos + 8 + length] for pos, length in structure.idat_spans)
    raw = zlib.decompress(body)
    stride = 4 * structure.header.width + 1
    assert structure.header.width == 256
    assert set(raw[::stride]) == {0}


def test_a_filtered_row_after_unfiltered_bands_still_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PixelRTS image whose last row is Paeth-filtered: the bands handed over before it are discarded and
    libpng decodes the proven data; the payload is the same."""
    payload = np.random.default_rng(7).integers(0, 256, 64 * 64 * 4 - 5, dtype=np.uint8).tobytes()
    ours = encode(payload).png
    structure = read_structure(ours)
    (text,) = [bytes(ours[p + 8 : p + 8 + n]) for p, n in _chunks(ours, b"tEXt")]
    pixels = np.asarray(Image.open(io.BytesIO(ours)).convert("RGBA"))
    refiltered = write_png(pixels, 6, [0] * 63 + [4], [8192], text=text)
    assert structure.header.width == 64
    path = tmp_path / "mixed.rts.png"
    path.write_bytes(refiltered)
    monkeypatch.setattr(codec, "_BLOCK_SIDE", 8)  # eight bands: seven handed over before row 63
    assert bytes(decode(path, use_sidecar=False)) == payload
    assert read_image(path, use_sidecar=False).payload == payload


def _chunks(png: bytes, ctype: bytes) -> list[tuple[int, int]]:
    found, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        if png[pos + 4 : pos + 8] == ctype:
            found.append((pos, length))
        pos += 12 + length
    return found


def _unfiltered_rgba(h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 4), dtype=np.uint8)


def _idat_replaced(png: bytes, raw: bytes) -> bytes:
    """``png`` with its pixel data replaced by the compressed ``raw`` scanlines (one IDAT chunk)."""
    (pos, length), = _chunks(png, b"IDAT")
    return png[:pos] + _chunk(b"IDAT", zlib.compress(raw)) + png[pos + 12 + length :]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda raw: raw[:33 * 3] + b"\x07" + raw[33 * 3 + 1 :],
     "corrupted PNG: invalid scanline filter type 7 at byte 99 of the pixel data"),
    (lambda raw: raw[:-1], "corrupted PNG: the pixel data ends early (263 of 264 bytes of scanlines)"),
    (lambda raw: raw + b"\0", "corrupted PNG: the pixel data inflates to more than the 264 bytes a 8x8 image holds"),
])
def test_damaged_unfiltered_data_is_refused_by_the_single_inflate(damage, message: str) -> None:  # type: ignore[no-untyped-def]
    png = write_png(_unfiltered_rgba(), 6, [0] * 8)
    (pos, length), = _chunks(png, b"IDAT")
    raw = zlib.decompress(png[pos + 8 : pos + 8 + length])
    bad = _idat_replaced(png, damage(raw))
    structure = read_structure(bad)
    for attempt in (lambda: _png.decode_unfiltered(bad, structure),
                    lambda: codec._stream_unfiltered(bad, structure, 8, codec._noop)):
        with pytest.raises(CorruptedError) as info:
            attempt()
        assert str(info.value) == message


def test_idat_crc_is_checked_by_the_single_inflate() -> None:
    png = write_png(_unfiltered_rgba(), 6, [0] * 8, [40])
    spans = _chunks(png, b"IDAT")
    pos, length = spans[2]
    bad = png[: pos + 8 + length] + bytes([png[pos + 8 + length] ^ 1]) + png[pos + 9 + length :]
    with pytest.raises(CorruptedError) as info:
        _png.decode_unfiltered(bad, read_structure(bad))
    assert str(info.value) == f"corrupted PNG: CRC error in chunk IDAT at byte {pos}"
