"""The PNG chunk walk over images with many IDAT chunks: the fast path over a run of IDATs (CRCs left
to libpng) must see what the full walk sees and report truncation at the same place."""

from __future__ import annotations

import struct

import pytest

from healing.errors import CorruptedError
from healing.pixelrts import _png
from healing.pixelrts._png import make_chunk, parse_structure


def _many_idat_png(chunks: int = 40) -> tuple[bytes, list[int]]:
    """A structurally valid PNG (the walk does not inflate) with ``chunks`` IDAT chunks of varied sizes;
    returns it and the byte offset of each IDAT chunk."""
    ihdr = make_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 6, 0, 0, 0))
    parts, offsets = [_png.SIGNATURE, ihdr, make_chunk(b"tEXt", b"PixelRTS\0{}")], []
    pos = sum(len(p) for p in parts)
    for i in range(chunks):
        offsets.append(pos)
        chunk = make_chunk(b"IDAT", bytes([i]) * (100 + 7 * i))
        parts.append(chunk)
        pos += len(chunk)
    parts.append(make_chunk(b"IEND", b""))
    return b"".join(parts), offsets


@pytest.mark.parametrize("check_idat_crc", [True, False])
def test_fast_and_full_walks_agree(check_idat_crc: bool) -> None:
    png, _ = _many_idat_png()
    s = parse_structure(png, check_idat_crc=check_idat_crc)
    assert s.chunk_types == ["IHDR", "tEXt"] + ["IDAT"] * 40 + ["IEND"]
    assert s.idat_bytes == sum(100 + 7 * i for i in range(40))
    assert s.texts == [("PixelRTS", "{}")]


@pytest.mark.parametrize("check_idat_crc", [True, False])
def test_truncation_inside_a_run_of_idat_chunks_is_named(check_idat_crc: bool) -> None:
    png, offsets = _many_idat_png()
    # Cut in the middle of IDAT chunk 17: the message names that chunk's offset.
    cut = offsets[17] + 50
    with pytest.raises(CorruptedError) as info:
        parse_structure(png[:cut], check_idat_crc=check_idat_crc)
    assert str(info.value) == f"truncated PNG: chunk IDAT at byte {offsets[17]} runs past the end of the file ({cut} bytes)"
    # Cut exactly between two IDAT chunks: the file ends before IEND.
    with pytest.raises(CorruptedError) as info:
        parse_structure(png[:offsets[23]], check_idat_crc=check_idat_crc)
    assert str(info.value) == f"truncated PNG: file ends at byte {offsets[23]} before the IEND chunk"
    # Cut inside a chunk header.
    with pytest.raises(CorruptedError) as info:
        parse_structure(png[:offsets[5] + 6], check_idat_crc=check_idat_crc)
    assert str(info.value) == f"truncated PNG: chunk header at byte {offsets[5]} is cut off"


def test_a_bad_idat_crc_is_caught_only_when_asked() -> None:
    png, offsets = _many_idat_png()
    broken = bytearray(png)
    broken[offsets[9] + 20] ^= 0xFF
    with pytest.raises(CorruptedError, match=f"^corrupted PNG: CRC error in chunk IDAT at byte {offsets[9]}$"):
        parse_structure(bytes(broken))
    assert parse_structure(bytes(broken), check_idat_crc=False).idat_bytes == sum(100 + 7 * i for i in range(40))


def test_a_garbage_length_inside_the_run_is_reported() -> None:
    png, offsets = _many_idat_png()
    broken = bytearray(png)
    broken[offsets[12]:offsets[12] + 4] = struct.pack(">I", 0x80000000)
    with pytest.raises(CorruptedError, match=f"^corrupted PNG: invalid chunk header at byte {offsets[12]}$"):
        parse_structure(bytes(broken), check_idat_crc=False)
