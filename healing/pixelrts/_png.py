"""Just enough PNG structure handling for PixelRTS: walk and check chunks, read IHDR and text chunks,
prove the pixel data sound before libpng sees it, splice a tEXt chunk into an encoded file.

OpenCV's libpng prints its own "libpng error/warning" lines on the process's stderr (from any thread)
and inflates whatever it is given. So hostile input never reaches it: IHDR is checked field by field,
text chunks are inflated only up to a limit, the IDAT stream is inflated here first — bounded by what
the declared image needs, filter bytes checked — and libpng gets only the chunks it needs to draw the
pixels (no ancillary chunk to warn about).

That proof inflates every scanline anyway, so for unfiltered 8-bit RGBA (filter type None on every
row, what our encoder writes) it also yields the pixels (:func:`decode_unfiltered`,
:func:`stream_unfiltered`) and libpng is not needed at all; any other image is proven, then left to
libpng, which unfilters it in C.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from healing.errors import CorruptedError, InputError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER_BYTES = 33  # signature + the IHDR chunk: all that is read before a file's size is judged
DEFAULT_MAX_TEXT_BYTES = 1 << 20  # pixelrts.max_metadata_bytes
_COLOUR_NAMES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
_INFLATE_STEP = 4 << 20  # output bytes per inflate call while proving the pixel data: bounded memory
_INFLATE_BATCH = 1 << 20  # compressed bytes of IDAT chunks joined per inflate call (fewer Python round trips)
_IDAT_CRC = zlib.crc32(b"IDAT")
_FILTER_TYPES = bytes(range(5))  # None, Sub, Up, Average, Paeth
_LIBPNG_TEXT_OK = 1 << 20  # tEXt chunks up to this size are left in the bytes handed to libpng


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

    def passes(self) -> list[tuple[int, int]]:
        """(rows, bytes per row without the filter byte) of each non-empty pass (one unless interlaced)."""
        bits = _CHANNELS[self.colour_type] * self.bit_depth
        sizes = [(self.width, self.height)] if not self.interlace else [
            (-(-(self.width - x0) // dx), -(-(self.height - y0) // dy)) for x0, y0, dx, dy in _ADAM7
            if self.width > x0 and self.height > y0]
        return [(h, -(-(w * bits) // 8)) for w, h in sizes]

    @property
    def raw_size(self) -> int:
        """Bytes of filtered scanlines the IDAT stream must inflate to, exactly."""
        return sum(rows * (1 + row) for rows, row in self.passes())

    @property
    def decoded_pixels(self) -> int:
        """Pixels counted against pixelrts.max_pixels: 16-bit samples decode to twice the memory."""
        return self.width * self.height * (2 if self.bit_depth == 16 else 1)


@dataclass
class PngStructure:
    header: Header
    texts: list[tuple[str, str]] = field(default_factory=list)  # (keyword, text) in file order
    chunk_types: list[str] = field(default_factory=list)
    idat_bytes: int = 0
    idat_spans: list[tuple[int, int]] = field(default_factory=list)  # (chunk offset, body length)
    idat_crc_checked: bool = True
    palette: bytes | None = None
    transparency: bytes | None = None
    plain_for_libpng: bool = True  # no chunk libpng could warn about: hand the bytes over as they are


def compressed_bound(raw: int) -> int:
    """The most bytes any deflate stream of ``raw`` bytes can take (zlib's conservative deflateBound)."""
    return raw + ((raw + 7) >> 3) + ((raw + 63) >> 6) + 5 + 6


def max_file_size(header: Header, max_text_bytes: int) -> int:
    """The largest file a PNG with this header can legitimately be: its IDAT bound, chunk headers for
    IDAT chunks of 64 bytes and up, text chunks up to their limit and 1 MiB of other chunks (ICC, EXIF)."""
    idat = compressed_bound(header.raw_size)
    return HEADER_BYTES + 12 + 3 * 256 + idat + 12 * (idat // 64 + 64) + 4 * compressed_bound(max_text_bytes) + (1 << 20)


def _header_from(body: bytes | memoryview) -> Header:
    w, h, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if w == 0 or h == 0:
        raise CorruptedError(f"corrupted PNG: IHDR declares zero dimensions {w}x{h}")
    if w > 0x7FFFFFFF or h > 0x7FFFFFFF:
        raise CorruptedError(f"corrupted PNG: IHDR dimensions {w}x{h} are out of range")
    if colour not in _DEPTHS:
        raise CorruptedError(f"corrupted PNG: IHDR declares an invalid colour type {colour}")
    if depth not in _DEPTHS[colour]:
        raise CorruptedError(f"corrupted PNG: IHDR declares bit depth {depth}, invalid for {_COLOUR_NAMES[colour]}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise CorruptedError("corrupted PNG: IHDR declares an unknown compression, filter or interlace method")
    return Header(w, h, depth, colour, interlace)


def _check_signature(view: memoryview) -> None:
    if len(view) == 0:
        raise InputError("empty file (0 bytes): not a PNG image")
    if bytes(view[:8]) != SIGNATURE:
        if SIGNATURE.startswith(bytes(view[:8])):
            raise CorruptedError(f"truncated PNG: only {len(view)} bytes, the signature is incomplete")
        raise InputError("not a PNG image (bad signature)")


def peek_header(prefix: bytes) -> Header | None:
    """The checked IHDR from a file's first HEADER_BYTES bytes; None when the prefix is too short to say
    (the whole file is then that short, and :func:`parse_structure` names the problem)."""
    view = memoryview(prefix)
    _check_signature(view)
    if len(view) < HEADER_BYTES:
        return None
    length, ctype = struct.unpack_from(">I4s", view, 8)
    if ctype != b"IHDR" or length != 13:
        raise CorruptedError("corrupted PNG: the first chunk is not a valid IHDR")
    (crc,) = struct.unpack_from(">I", view, 29)
    if zlib.crc32(view[16:29], zlib.crc32(b"IHDR")) != crc:
        raise CorruptedError("corrupted PNG: CRC error in chunk IHDR at byte 8")
    return _header_from(view[16:29])


class _OverBudget(Exception):
    """A text chunk holds more than the text budget left (never inflated further)."""


def _inflate_text(data: bytes, budget: int) -> bytes | None:
    """Inflate a text chunk's payload, never past ``budget`` + 1 bytes; None when it is not zlib."""
    try:
        return zlib.decompressobj().decompress(data, budget + 1)
    except zlib.error:
        return None


def _read_text_chunk(ctype: bytes, raw: bytes, budget: int) -> tuple[str, str] | None:
    """(keyword, text), or None when unreadable (not ours); _OverBudget past ``budget`` bytes."""
    key, _, rest = raw.partition(b"\0")
    try:
        if ctype == b"tEXt":
            text, encoding = rest, "latin-1"
        elif ctype == b"zTXt":
            text, encoding = _inflate_text(rest[1:], budget), "latin-1"
        else:  # iTXt: keyword, compression flag and method, language, translated keyword, text
            compressed = rest[0]
            _lang, _, rest = rest[2:].partition(b"\0")
            _translated, _, body = rest.partition(b"\0")
            text, encoding = (_inflate_text(body, budget) if compressed else body), "utf-8"
        if text is None:
            return None
        if len(text) > budget:
            raise _OverBudget
        return key.decode("latin-1"), text.decode(encoding)
    except (UnicodeDecodeError, IndexError):
        return None  # an unreadable text chunk is not ours; the metadata search reports absence


def _libpng_quiet_text(body: memoryview) -> bool:
    """A tEXt chunk libpng reads without a warning: a 1-79 character printable keyword, moderate size."""
    key = bytes(body[:80]).partition(b"\0")[0]
    return (0 < len(key) < 80 and len(body) <= _LIBPNG_TEXT_OK and all(32 <= c < 127 or c >= 161 for c in key)
            and not key.startswith(b" ") and not key.endswith(b" ") and b"  " not in key)


def parse_structure(data: bytes | memoryview, *, check_crc: bool = True, check_idat_crc: bool = True,
                    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> PngStructure:
    """Walk every chunk, verifying lengths, CRCs and chunk order; raise on anything a decoder would trip over.

    ``check_idat_crc=False`` skips the CRCs of pixel-data chunks, for callers that prove the pixel data
    next (:func:`check_image_data` checks them while inflating). Text chunks hold at most
    ``max_text_bytes`` bytes in all, decompressed; more is a CorruptedError, found without inflating
    past the limit.

    Raises InputError when the bytes are not a PNG at all and CorruptedError when a PNG is
    truncated, has a bad CRC or breaks the chunk rules.
    """
    view = memoryview(data)
    _check_signature(view)
    pos = 8
    structure: PngStructure | None = None
    idat_run = "before"  # before | in | after: IDAT chunks must be consecutive
    text_budget = max_text_bytes
    end = len(view)
    while True:
        if pos == end:
            raise CorruptedError(f"truncated PNG: file ends at byte {end} before the IEND chunk")
        if pos + 8 > end:
            raise CorruptedError(f"truncated PNG: chunk header at byte {pos} is cut off")
        length, ctype = struct.unpack_from(">I4s", view, pos)
        if ctype == b"IDAT" and structure is not None and idat_run != "after" and not (check_crc and check_idat_crc):
            # Fast path over a run of pixel-data chunks (a 64 MiB image has thousands of them): only
            # lengths here; check_image_data verifies their CRCs while it inflates them.
            run, total, p = 0, 0, pos
            while p + 12 <= end:
                length, ctype = struct.unpack_from(">I4s", view, p)
                if ctype != b"IDAT" or length > 0x7FFFFFFF or p + 12 + length > end:
                    break
                structure.idat_spans.append((p, length))
                run, total, p = run + 1, total + length, p + 12 + length
            if run:
                structure.chunk_types.extend(["IDAT"] * run)
                structure.idat_bytes += total
                structure.idat_crc_checked = False
                idat_run = "in"
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
        if structure is None:
            if ctype != b"IHDR" or length != 13:
                raise CorruptedError("corrupted PNG: the first chunk is not a valid IHDR")
            structure = PngStructure(_header_from(body))
        elif ctype == b"IHDR":
            raise CorruptedError(f"corrupted PNG: a second IHDR chunk at byte {pos}")
        structure.chunk_types.append(name)
        if idat_run == "in" and ctype != b"IDAT":
            idat_run = "after"
        if ctype == b"IDAT":
            if not (check_crc and check_idat_crc):
                structure.idat_crc_checked = False  # check_image_data verifies it
            if idat_run == "after":
                raise CorruptedError(f"corrupted PNG: IDAT chunk at byte {pos} after other chunks: IDAT chunks must be consecutive")
            idat_run = "in"
            structure.idat_bytes += length
            structure.idat_spans.append((pos, length))
        elif ctype == b"IEND":
            if idat_run == "before":
                raise CorruptedError("corrupted PNG: no IDAT chunk (no pixel data)")
            if structure.header.colour_type == 3 and structure.palette is None:
                raise CorruptedError("corrupted PNG: a palette image without a PLTE chunk")
            return structure
        elif ctype == b"PLTE":
            if idat_run != "before" or structure.palette is not None or length % 3 or not 3 <= length <= 768:
                raise CorruptedError(f"corrupted PNG: invalid PLTE chunk at byte {pos}")
            if structure.header.colour_type in (0, 4):
                structure.plain_for_libpng = False  # libpng warns about a palette in a greyscale image
            else:
                structure.palette = bytes(body)
                if structure.header.colour_type == 3:
                    structure.plain_for_libpng = False  # the palette is fitted to the bit depth for libpng
        elif ctype == b"tRNS":
            structure.plain_for_libpng = False
            if idat_run == "before" and _valid_transparency(structure, length):
                structure.transparency = bytes(body)
        elif ctype in (b"tEXt", b"zTXt", b"iTXt"):
            if ctype != b"tEXt" or not _libpng_quiet_text(body):
                structure.plain_for_libpng = False
            try:
                text = _read_text_chunk(ctype, bytes(body), text_budget)
            except _OverBudget:
                raise CorruptedError(f"PNG text chunk {name} at byte {pos} is over the limit: text chunks may hold "
                                     f"{max_text_bytes} bytes in all, decompressed (pixelrts.max_metadata_bytes)") from None
            if text is not None:
                structure.texts.append(text)
                text_budget -= len(text[1])
        elif ctype[0] & 0x20 == 0 and ctype not in _CRITICAL:  # critical (upper-case first letter), unknown
            raise CorruptedError(f"corrupted PNG: unknown critical chunk {name} at byte {pos}")
        elif ctype != b"IHDR":
            structure.plain_for_libpng = False
        pos += 12 + length


def _valid_transparency(structure: PngStructure, length: int) -> bool:
    colour = structure.header.colour_type
    if colour == 0:
        return length == 2
    if colour == 2:
        return length == 6
    return colour == 3 and structure.palette is not None and 0 < length <= len(structure.palette) // 3


def check_image_data(data: bytes | memoryview, structure: PngStructure) -> None:
    """Prove the pixel data decodable before libpng sees it: IDAT CRCs, a zlib stream that inflates to
    exactly the declared scanlines (never inflated past them) and valid filter-type bytes.

    IDAT data larger than the declared image could ever need is refused without inflating it.
    """
    _prove_image_data(data, structure, None)


def decode_unfiltered(data: bytes | memoryview, structure: PngStructure) -> np.ndarray | None:
    """Prove the pixel data as :func:`check_image_data` does and, in that same single inflate, collect the
    pixels of a non-interlaced 8-bit RGBA image whose scanlines are all unfiltered (filter type None, what
    our encoder writes): an (h, w, 4) RGBA uint8 array. None when libpng has to unfilter the (proven) data.
    """
    header = structure.header
    if not _unfilterable(header):
        check_image_data(data, structure)
        return None
    rows = _UnfilteredRows(header.width, header.height, header.height)
    _prove_image_data(data, structure, rows)
    return rows.buffer.reshape(header.height, header.width, 4) if rows.buffer is not None else None


def stream_unfiltered(data: bytes | memoryview, structure: PngStructure, band_rows: int,
                      on_band: Callable[[int, np.ndarray], None]) -> bool:
    """Prove the pixel data as :func:`check_image_data` does and hand the rows of an unfiltered 8-bit RGBA
    image to ``on_band(first_row, rows)`` as they are inflated, ``band_rows`` (h, 4·w) rows at a time in
    one reused buffer (the last band may be shorter). True when the whole image went that way; False when
    libpng has to unfilter the (proven) data, whatever bands were handed over before a filtered row.
    """
    header = structure.header
    if not _unfilterable(header):
        check_image_data(data, structure)
        return False
    rows = _UnfilteredRows(header.width, header.height, band_rows, on_band)
    _prove_image_data(data, structure, rows)
    return rows.buffer is not None


def _unfilterable(header: Header) -> bool:
    return header.colour_type == 6 and header.bit_depth == 8 and not header.interlace


class _UnfilteredRows:
    """Copies the pixel bytes of filter-type-None scanlines, as they are inflated, into an aligned buffer
    of ``band_rows`` rows, handed to ``on_band`` whenever it fills; gives up (``buffer`` None) at the first
    scanline with another filter type."""

    def __init__(self, width: int, height: int, band_rows: int,
                 on_band: Callable[[int, np.ndarray], None] | None = None) -> None:
        self.stride = 4 * width + 1
        self.height = height
        self.buffer: np.ndarray | None = np.empty((min(band_rows, height), 4 * width), dtype=np.uint8)
        self.on_band = on_band
        self.band_start = 0  # image row of the buffer's first row
        self.filled = 0  # rows of the buffer filled
        self.carry = bytearray()  # the start of a scanline cut by the end of an inflated piece

    def feed(self, out: bytes, at: int) -> None:
        """Take inflated piece ``out`` (stream offset ``at``, filter bytes already checked valid)."""
        if self.buffer is None:
            return
        stride = self.stride
        if out[(-at) % stride :: stride].translate(None, b"\0"):
            self.buffer = None  # some scanline is filtered: libpng unfilters it
            return
        i = 0
        if self.carry:
            i = min(len(out), stride - len(self.carry))
            self.carry += out[:i]
            if len(self.carry) < stride:
                return
            self._put(np.frombuffer(bytes(self.carry), dtype=np.uint8)[1:].reshape(1, -1))
            self.carry.clear()
        full = (len(out) - i) // stride
        if full:
            self._put(np.frombuffer(out, dtype=np.uint8)[i : i + full * stride].reshape(full, stride)[:, 1:])
            i += full * stride
        self.carry += out[i:]

    def _put(self, rows: np.ndarray) -> None:
        buffer = self.buffer
        assert buffer is not None
        done = 0
        while done < len(rows):
            take = min(len(rows) - done, len(buffer) - self.filled)
            buffer[self.filled : self.filled + take] = rows[done : done + take]
            self.filled += take
            done += take
            if self.filled == len(buffer) or self.band_start + self.filled == self.height:
                if self.on_band is not None:
                    self.on_band(self.band_start, buffer[: self.filled])
                    self.band_start += self.filled
                    self.filled = 0


def _prove_image_data(data: bytes | memoryview, structure: PngStructure, rows_out: _UnfilteredRows | None) -> None:
    header = structure.header
    view = memoryview(data)
    raw = header.raw_size
    bound = compressed_bound(raw)
    if structure.idat_bytes > bound:
        raise CorruptedError(f"corrupted PNG: {structure.idat_bytes} bytes of IDAT data, more than a {header.width}x"
                             f"{header.height} {header.colour_name} image can need ({bound}); not inflated")
    # Where each scanline's filter byte falls in the inflated stream: (start, stride, count) per pass.
    rows: list[tuple[int, int, int]] = []
    offset = 0
    for count, row in header.passes():
        rows.append((offset, row + 1, count))
        offset += count * (row + 1)
    inflater = zlib.decompressobj()
    produced = 0
    spans = structure.idat_spans
    next_span = 0
    try:
        while next_span < len(spans):
            # Chunks are inflated in batches (a 64 MiB image has thousands of 8 KiB IDAT chunks), each
            # chunk's CRC checked before its batch is inflated.
            bodies: list[memoryview] = []
            size = 0
            while next_span < len(spans) and size < _INFLATE_BATCH:
                pos, length = spans[next_span]
                body = view[pos + 8 : pos + 8 + length]
                if not structure.idat_crc_checked:
                    (crc,) = struct.unpack_from(">I", view, pos + 8 + length)
                    if zlib.crc32(body, _IDAT_CRC) != crc:
                        raise CorruptedError(f"corrupted PNG: CRC error in chunk IDAT at byte {pos}")
                bodies.append(body)
                size += length
                next_span += 1
            pending: bytes | memoryview = bodies[0] if len(bodies) == 1 else b"".join(bodies)
            while pending:
                if inflater.eof:
                    raise CorruptedError("corrupted PNG: data after the end of the compressed image (surplus IDAT data)")
                out = inflater.decompress(pending, min(_INFLATE_STEP, raw - produced + 1))
                pending = inflater.unconsumed_tail
                if produced + len(out) > raw:
                    raise CorruptedError(f"corrupted PNG: the pixel data inflates to more than the {raw} bytes a "
                                         f"{header.width}x{header.height} image holds")
                _check_filters(out, produced, rows)
                if rows_out is not None:
                    rows_out.feed(out, produced)
                produced += len(out)
    except zlib.error as exc:
        raise CorruptedError(f"corrupted PNG: the pixel data cannot be decompressed (zlib: {exc})") from None
    if inflater.unused_data:
        raise CorruptedError("corrupted PNG: data after the end of the compressed image (surplus IDAT data)")
    if not inflater.eof or produced != raw:
        raise CorruptedError(f"corrupted PNG: the pixel data ends early ({produced} of {raw} bytes of scanlines)")


def _check_filters(out: bytes, at: int, rows: list[tuple[int, int, int]]) -> None:
    """Filter-type bytes (0-4) of the scanlines whose first byte lies in ``out`` (stream offset ``at``)."""
    stop = at + len(out)
    for start, stride, count in rows:
        last = start + stride * (count - 1)
        if last < at or start >= stop:
            continue
        first = start if start >= at else start + -(-(at - start) // stride) * stride
        picked = out[first - at : min(stop, last + 1) - at : stride]
        bad = picked.translate(None, _FILTER_TYPES)  # what is left is not a filter type
        if bad:
            where = first + picked.index(bad[0]) * stride
            raise CorruptedError(f"corrupted PNG: invalid scanline filter type {bad[0]} at byte {where} of the pixel data")


def for_libpng(data: bytes | memoryview, structure: PngStructure) -> bytes | memoryview:
    """The bytes to hand to libpng: the file itself when it holds nothing libpng could warn about, else a
    minimal PNG (IHDR, PLTE padded to the bit depth's range, valid tRNS, the IDAT chunks, IEND)."""
    if structure.plain_for_libpng:
        return data
    view = memoryview(data)
    parts: list[bytes | memoryview] = [SIGNATURE, view[8:HEADER_BYTES]]
    entries = 1 << min(structure.header.bit_depth, 8)
    if structure.palette is not None:
        palette = structure.palette
        if structure.header.colour_type == 3:  # exactly one entry per index a pixel can hold: no range warning
            palette = palette[: 3 * entries].ljust(3 * entries, b"\0")
        parts.append(make_chunk(b"PLTE", palette))
    if structure.transparency is not None:
        parts.append(make_chunk(b"tRNS", structure.transparency[:entries] if structure.header.colour_type == 3 else structure.transparency))
    first = structure.idat_spans[0][0]
    last_pos, last_len = structure.idat_spans[-1]
    parts.append(view[first : last_pos + 12 + last_len])
    parts.append(make_chunk(b"IEND", b""))
    return b"".join(parts)


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
