"""Just enough PNG structure handling for PixelRTS: walk and check chunks, read IHDR and text chunks,
splice a tEXt chunk into an encoded file. Pixel (de)compression itself is left to OpenCV."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from healing.errors import CorruptedError, InputError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_NAMES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


@dataclass
class Header:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int

    @property
    def colour_name(self) -> str:
        return _COLOUR_NAMES.get(self.colour_type, f"colour type {self.colour_type}")


@dataclass
class PngStructure:
    header: Header
    texts: list[tuple[str, str]] = field(default_factory=list)  # (keyword, text) in file order
    chunk_types: list[str] = field(default_factory=list)
    idat_bytes: int = 0


def _read_text_chunk(ctype: bytes, data: memoryview) -> tuple[str, str] | None:
    raw = bytes(data)
    try:
        if ctype == b"tEXt":
            key, _, text = raw.partition(b"\0")
            return key.decode("latin-1"), text.decode("latin-1")
        if ctype == b"zTXt":
            key, _, rest = raw.partition(b"\0")
            return key.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        if ctype == b"iTXt":
            key, _, rest = raw.partition(b"\0")
            compressed, _method = rest[0], rest[1]
            _lang, _, rest = rest[2:].partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            if compressed:
                text = zlib.decompress(text)
            return key.decode("latin-1"), text.decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return None  # an unreadable text chunk is not ours; the metadata search reports absence
    return None


def parse_structure(data: bytes | memoryview, *, check_crc: bool = True, check_idat_crc: bool = True) -> PngStructure:
    """Walk every chunk, verifying lengths and CRCs; raise on anything a decoder would trip over.

    ``check_idat_crc=False`` skips the CRCs of pixel-data chunks, for callers that hand the bytes to
    libpng next (it checks them itself) and re-walk with CRCs only to explain a failure.

    Raises InputError when the bytes are not a PNG at all and CorruptedError when a PNG is
    truncated, has a bad CRC or breaks the chunk rules.
    """
    view = memoryview(data)
    if len(view) == 0:
        raise InputError("empty file (0 bytes): not a PNG image")
    if bytes(view[:8]) != SIGNATURE:
        if SIGNATURE.startswith(bytes(view[:8])):
            raise CorruptedError(f"truncated PNG: only {len(view)} bytes, the signature is incomplete")
        raise InputError("not a PNG image (bad signature)")
    pos = 8
    header: Header | None = None
    structure: PngStructure | None = None
    seen_idat = False
    end = len(view)
    while True:
        if pos == end:
            raise CorruptedError(f"truncated PNG: file ends at byte {end} before the IEND chunk")
        if pos + 8 > end:
            raise CorruptedError(f"truncated PNG: chunk header at byte {pos} is cut off")
        length, ctype = struct.unpack_from(">I4s", view, pos)
        if ctype == b"IDAT" and header is not None and not (check_crc and check_idat_crc):
            # Fast path over a run of pixel-data chunks (a 64 MiB image has thousands of them): only
            # lengths are checked here; libpng checks their CRCs, and a bad one is explained by a re-walk.
            run, total, p = 0, 0, pos
            while p + 12 <= end:
                length, ctype = struct.unpack_from(">I4s", view, p)
                if ctype != b"IDAT" or length > 0x7FFFFFFF or p + 12 + length > end:
                    break
                run, total, p = run + 1, total + length, p + 12 + length
            if run:
                assert structure is not None
                structure.chunk_types.extend(["IDAT"] * run)
                structure.idat_bytes += total
                seen_idat = True
                pos = p
                continue
            length, ctype = struct.unpack_from(">I4s", view, pos)
        name = ctype.decode("latin-1")
        if length > 0x7FFFFFFF or not ctype.isalpha():
            raise CorruptedError(f"corrupted PNG: invalid chunk header at byte {pos}")
        if pos + 12 + length > end:
            raise CorruptedError(f"truncated PNG: chunk {name} at byte {pos} runs past the end of the file ({end} bytes)")
        body = view[pos + 8 : pos + 8 + length]
        if check_crc and (check_idat_crc or ctype != b"IDAT"):
            (crc,) = struct.unpack_from(">I", view, pos + 8 + length)
            if zlib.crc32(body, zlib.crc32(ctype)) != crc:
                raise CorruptedError(f"corrupted PNG: CRC error in chunk {name} at byte {pos}")
        if header is None:
            if ctype != b"IHDR" or length != 13:
                raise CorruptedError("corrupted PNG: the first chunk is not a valid IHDR")
            w, h, depth, colour, _comp, _filt, interlace = struct.unpack(">IIBBBBB", body)
            if w == 0 or h == 0:
                raise CorruptedError(f"corrupted PNG: IHDR declares zero dimensions {w}x{h}")
            header = Header(w, h, depth, colour, interlace)
            structure = PngStructure(header)
        assert structure is not None
        structure.chunk_types.append(name)
        if ctype == b"IDAT":
            seen_idat = True
            structure.idat_bytes += length
        elif ctype in (b"tEXt", b"zTXt", b"iTXt"):
            text = _read_text_chunk(ctype, body)
            if text is not None:
                structure.texts.append(text)
        elif ctype == b"IEND":
            if not seen_idat:
                raise CorruptedError("corrupted PNG: no IDAT chunk (no pixel data)")
            return structure
        pos += 12 + length


def make_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(ctype)))


def insert_before_idat(png: bytes, chunk: bytes) -> bytes:
    """Return ``png`` with ``chunk`` placed right before the first IDAT chunk."""
    pos = 8
    view = memoryview(png)
    while pos + 8 <= len(view):
        (length,) = struct.unpack_from(">I", view, pos)
        if bytes(view[pos + 4 : pos + 8]) == b"IDAT":
            return b"".join((view[:pos], chunk, view[pos:]))
        pos += 12 + length
    raise ValueError("encoded PNG has no IDAT chunk")
