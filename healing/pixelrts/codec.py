"""Encode and decode PixelRTS v2 images (PIXELRTS_V2.md), verify them, and read byte ranges.

Hot paths are NumPy/OpenCV only: the Hilbert permutation is a cached index table applied in chunks
(so no per-pixel Python loop and no full-size int64 temporaries), PNG compression is libpng via
OpenCV (unfiltered scanlines), decompression is the one inflate that proves the pixel data for
unfiltered RGBA and libpng via OpenCV for everything else, and metadata lives in a tEXt chunk
spliced into the encoded bytes.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from healing.errors import CorruptedError, InputError, UsageError
from healing.pixelrts import _compress, _png, _wasm
from healing.pixelrts import _metadata as md
from healing.pixelrts._hilbert import is_power_of_two, linear_table
from healing.pixelrts._schema import parse_metadata
from healing.safeio import describe_oserror, open_regular, read_regular, refuse_symlink, write_atomic

Progress = Callable[[str, float], None]
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_MAX_METADATA_BYTES = _png.DEFAULT_MAX_TEXT_BYTES
_CHUNK = 1 << 20  # curve positions per gather/scatter step: bounded temporaries, progress granularity
# Side of the square blocks gathered at once while an unfiltered image is inflated: a band of 128 rows
# (2 MiB at 4096²) and 16384 positions per gather keep the scratch memory small (fresh pages are slow).
_BLOCK_SIDE = 128


def _noop(_stage: str, _fraction: float) -> None:
    return None


# ----------------------------------------------------------------------------- data classes

@dataclass
class EncodedImage:
    png: bytes
    metadata: dict[str, Any]


@dataclass
class Problem:
    kind: str  # hash_mismatch | padding | segment_mismatch | sidecar_mismatch | metadata | structure
    message: str
    byte_range: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "byte_range": list(self.byte_range) if self.byte_range else None}


@dataclass
class PixelRTSImage:
    """A decoded image: pixels, curve-ordered stream, metadata and (lazily) the original payload."""

    path: Path | None
    grid_size: int
    pixels: np.ndarray | None  # (n, n, 4) uint8, RGBA; None only inside decode()'s payload-only path
    stream: np.ndarray  # (4·n²,) uint8 in curve order
    metadata: dict[str, Any] | None
    metadata_source: str | None  # "sidecar:<name>" | "text" | None
    stored_length: int
    file_size: int
    file_sha256: str | None  # only when read_image(..., file_hash=True)
    png_info: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)  # found while reading (sidecar mismatch, …)
    payload_limit: int = 4 * DEFAULT_MAX_PIXELS  # a compressed payload is never inflated past this
    compression_note: str | None = None  # set with ``payload``: the label disagreed with the stream (informational)
    _buffer: bytearray | None = field(default=None, repr=False)  # owner of ``stream`` on the decode() path

    @property
    def capacity(self) -> int:
        return 4 * self.grid_size * self.grid_size

    @property
    def is_pixelrts(self) -> bool:
        return self.metadata is not None

    @property
    def data_size(self) -> int:
        if self.metadata and isinstance(self.metadata.get("data_size"), int):
            return int(self.metadata["data_size"])
        return self.stored_length

    @cached_property
    def payload(self) -> bytes:
        """The original data: the stored bytes, decompressed, or the code-mode base64 copy."""
        unpacked = _payload_from(self.metadata, self.stream, self.stored_length, self.payload_limit)
        self.compression_note = unpacked.note
        return unpacked.data

    @property
    def _stored_verbatim(self) -> bool:
        meta = self.metadata or {}
        return not meta.get("compression") and meta.get("original_data_b64") is None

    def payload_view(self) -> bytes | memoryview:
        """The payload without copying it when the pixels hold it verbatim (for hashing and slicing)."""
        if self._stored_verbatim and "payload" not in self.__dict__:
            return memoryview(self.stream)[: self.stored_length]
        return self.payload

    def take_payload(self) -> bytes | bytearray:
        """Hand over the payload, reusing the decode buffer when possible (the image is unusable after)."""
        buf = self._buffer
        if buf is None or not self._stored_verbatim:
            return self.payload
        self._buffer = None
        self.stream = np.empty(0, dtype=np.uint8)
        try:
            del buf[self.stored_length :]
        except BufferError:  # someone still holds a view of the stream: fall back to a copy
            return bytes(memoryview(buf)[: self.stored_length])
        return buf

    def padding_start(self) -> int:
        """Where the zero padding must begin (code mode writes whole pixels for the last group)."""
        meta = self.metadata or {}
        if meta.get("original_data_b64") is not None and (meta.get("encoding") or {}).get("type") == "RGBA-code":
            return min(self.capacity, -(-self.stored_length // 4) * 4)
        return self.stored_length


@dataclass
class VerifyReport:
    ok: bool
    hash_verified: bool | None
    problems: list[Problem]
    image: PixelRTSImage
    notes: list[str] = field(default_factory=list)  # informational, never a reason to fail

    def to_dict(self) -> dict[str, Any]:
        img = self.image
        return {
            "path": str(img.path) if img.path else None,
            "valid": self.ok,
            "pixelrts": img.is_pixelrts,
            "hash_verified": self.hash_verified,
            "grid_size": img.grid_size,
            "data_size": img.data_size,
            "capacity": img.capacity,
            "metadata_source": img.metadata_source,
            "problems": [p.to_dict() for p in self.problems],
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- pixel permutation

def _stream_to_pixels(stream32: np.ndarray, n: int, progress: Progress) -> np.ndarray:
    """Scatter curve-ordered 32-bit pixels into a row-major (n, n) uint32 image."""
    table = linear_table(n)
    flat = np.zeros(n * n, dtype=np.uint32)
    total = n * n
    for start in range(0, total, _CHUNK):
        stop = min(start + _CHUNK, total)
        flat[table[start:stop]] = stream32[start:stop]
        progress("arranging pixels", stop / total)
    return flat.reshape(n, n)


def _pixels_to_stream(pixels32: np.ndarray, n: int, progress: Progress, first: int = 0, count: int | None = None) -> np.ndarray:
    """Gather curve positions [first, first+count) from a row-major (n, n) uint32 image."""
    table = linear_table(n)
    flat = pixels32.reshape(-1)
    count = n * n - first if count is None else count
    out = np.empty(count, dtype=np.uint32)
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        np.take(flat, table[first + start : first + stop], out=out[start:stop])
        progress("reading pixels", stop / count)
    return out


def _gather_stream(pixels: np.ndarray, n: int, progress: Progress, *, bgra: bool) -> bytearray:
    """Gather curve-ordered pixels straight from an (n, n, 4) array into a new buffer, swapping OpenCV's
    BGRA to RGBA chunk by chunk when ``bgra`` (one pass over the data instead of a full-image conversion
    plus a gather). Chunks run on two threads: both NumPy's take and OpenCV release the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    table = linear_table(n)
    flat = pixels.view(np.uint32).reshape(-1)
    total = n * n
    buf = bytearray(4 * total)
    out = np.frombuffer(buf, dtype=np.uint32)
    step = min(_CHUNK, total)

    def work(start: int) -> None:
        stop = min(start + step, total)
        chunk = out[start:stop]
        np.take(flat, table[start:stop], out=chunk)
        if bgra:
            view = chunk.view(np.uint8).reshape(1, -1, 4)
            cv2.cvtColor(view, cv2.COLOR_BGRA2RGBA, dst=view)

    starts = range(0, total, step)
    if total >= 4 * _CHUNK:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for i, _ in enumerate(pool.map(work, starts), 1):
                progress("reading pixels", i / len(starts))
    else:
        for start in starts:
            work(start)
    return buf  # ``out`` dies with this frame, so the caller may resize ``buf``


def _stream_unfiltered(data: bytes, structure: _png.PngStructure, n: int, progress: Progress) -> bytearray | None:
    """The curve-ordered stream of an unfiltered 8-bit RGBA n×n PNG, gathered band by band while the
    proof inflates it (:func:`_png.stream_unfiltered`): no full-size pixel array, one inflate, no libpng.
    None when the image needs libpng; its pixel data is proven either way.

    All on this thread: a second one gathering bands while this one inflates measured slower (the two
    hand the GIL back and forth between their NumPy and zlib calls)."""
    gather = _BandGather(n, progress)
    done = _png.stream_unfiltered(data, structure, gather.side, gather.take_band)
    return gather.buf if done else None


class _BandGather:
    """The grid cut into square blocks of side ``side`` (_BLOCK_SIDE at most), gathered a band of ``side``
    rows at a time: the curve runs through each block in one piece, so a band's blocks are gathered as
    soon as its rows are in. The table and the output are made at the first band: damage found before
    it costs neither."""

    def __init__(self, n: int, progress: Progress) -> None:
        self.n = n
        self.progress = progress
        self.side = min(n, _BLOCK_SIDE)
        self.buf: bytearray | None = None
        self._table = np.empty(0, dtype=np.uint32)
        self._blocks_of: list[list[int]] = []
        self._local = np.empty(0, dtype=np.intp)

    def take_band(self, first_row: int, rows: np.ndarray) -> None:
        n, side = self.n, self.side
        area = side * side
        if self.buf is None:
            self._table = linear_table(n)
            block_band = self._table[::area] // np.uint32(n * side)  # the band of each block, in curve order
            self._blocks_of = [np.flatnonzero(block_band == band).tolist() for band in range(n // side)]
            self._local = np.empty(area, dtype=np.intp)
            self.buf = bytearray(4 * n * n)
        out = np.frombuffer(self.buf, dtype=np.uint32)  # per band: no view of ``buf`` outlives the gather
        flat = rows.reshape(-1).view(np.uint32)
        base = np.uint32(first_row * n)
        for block in self._blocks_of[first_row // side]:
            np.subtract(self._table[block * area : (block + 1) * area], base, out=self._local, casting="unsafe")
            np.take(flat, self._local, out=out[block * area : (block + 1) * area])
        self.progress("decoding PNG", (first_row + len(rows)) / n)  # inflating and gathering are one stage here


# ----------------------------------------------------------------------------- encoding

def encode(
    data: bytes,
    *,
    grid_size: int | None = None,
    mode: str = "standard",
    metadata: dict[str, Any] | None = None,
    segments: dict[str, dict[str, Any]] | None = None,
    compression: str | None = None,
    compression_level: int = 6,
    legacy_grid: bool = False,
    progress: Progress | None = None,
) -> EncodedImage:
    """Pack ``data`` into a PixelRTS v2 PNG.

    ``metadata`` holds caller keys (``type``, ``name``, ``description``, …; ``version`` is stored as
    ``content_version``). ``segments`` maps names to ``{"start", "size", ...}`` ranges of ``data``;
    each gets a sha256 in ``offsets`` and ``hashes``. ``compression`` ("zlib", or "zstd" with the optional
    zstandard package, labelled "zstd-h5") compresses the payload before it is placed in the pixels; in code
    mode ``original_data_b64`` then holds the compressed bytes, as their writer does. ``compression_level``
    is the PNG zlib level (0–9).
    """
    progress = progress or _noop
    if mode not in md.MODES:
        raise UsageError(f"--mode must be standard or code, got {mode!r}")
    if not 0 <= compression_level <= 9:
        raise UsageError(f"compression level must be 0..9, got {compression_level}")
    data = bytes(data)
    data_hash = hashlib.sha256(data).hexdigest()

    seg_meta: dict[str, dict[str, Any]] = {}
    for name, seg in (segments or {}).items():
        start, size = int(seg["start"]), int(seg["size"])
        if start < 0 or size < 0 or start + size > len(data):
            raise UsageError(f"segment {name!r} [{start}, {start + size}) lies outside the {len(data)}-byte input")
        entry = {k: v for k, v in seg.items() if k not in ("start", "size", "sha256")}
        entry.update(size=size, sha256=hashlib.sha256(data[start : start + size]).hexdigest(), start=start)
        seg_meta[str(name)] = entry

    comp_meta = None
    stored = data
    if compression not in (None, "none"):
        stored, comp_meta = _compress.compress(data, str(compression))

    code_pixels = mode == "code" and stored.startswith(_wasm.WASM_MAGIC)
    stream_bytes = _wasm.code_pixels(stored) if code_pixels else np.frombuffer(stored, dtype=np.uint8)
    needed = len(stream_bytes)
    n = md.check_grid_size(grid_size, needed) if grid_size is not None else md.grid_size_for(needed, legacy=legacy_grid)

    meta = md.build_metadata(
        grid_size=n,
        mode=mode,
        data_hash=data_hash,
        data_size=len(data),
        caller=metadata,
        segments=seg_meta,
        compression=comp_meta,
        encoded_size=len(stored) if comp_meta else None,
        original_b64=base64.b64encode(stored).decode("ascii") if mode == "code" else None,
    )

    buf = np.zeros(4 * n * n, dtype=np.uint8)
    buf[:needed] = stream_bytes
    pixels = _stream_to_pixels(buf.view(np.uint32), n, progress).view(np.uint8).reshape(n, n, 4)
    del buf
    cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA, dst=pixels)
    progress("compressing PNG", 0.0)
    # Unfiltered scanlines: PNG's pixel-neighbour filters do not fit bytes laid along a curve (the same or
    # smaller files in our measurements, faster to write), and decoding them needs no libpng pass after
    # the inflate that proves the data (healing.pixelrts._png.decode_unfiltered). An OpenCV without the
    # parameter chooses filters itself: such files decode through libpng, as any other PNG does.
    unfiltered = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE] if hasattr(cv2, "IMWRITE_PNG_FILTER") else []
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, compression_level, *unfiltered])
    if not ok:
        raise InputError("OpenCV could not encode the PNG")
    progress("compressing PNG", 1.0)
    chunk = _png.make_chunk(b"tEXt", b"PixelRTS\0" + md.text_value(meta).encode("latin-1"))
    return EncodedImage(png=_png.insert_before_idat(encoded.tobytes(), chunk), metadata=meta)


def write_image(data: bytes, path: str | os.PathLike[str], *, sidecar: bool = True,
                max_metadata_bytes: int | None = None, **options: Any) -> dict[str, Any]:
    """Encode ``data`` and write the PNG (and its ``.meta.json`` sidecar) atomically; return the metadata.

    Neither file is written through a symlink: an existing link (or FIFO, device) at either path is refused.
    Metadata over ``max_metadata_bytes`` (readers refuse it; code mode embeds the whole input) is a usage error.
    """
    path = Path(path)
    encoded = encode(data, **options)
    limit = max_metadata_bytes or DEFAULT_MAX_METADATA_BYTES
    size = len(md.sidecar_text(encoded.metadata).encode("utf-8"))
    if size > limit:
        raise UsageError(f"the metadata would take {size} bytes, over pixelrts.max_metadata_bytes ({limit}): "
                         "readers would refuse the image (code mode embeds the whole input)")
    side = path.with_name(path.name + ".meta.json")
    if sidecar:
        refuse_symlink(side, "sidecar")  # before the image is written: both or neither
    write_atomic(path, encoded.png, what="image")
    if sidecar:
        write_atomic(side, md.sidecar_text(encoded.metadata), what="sidecar")
    return encoded.metadata


# ----------------------------------------------------------------------------- reading

def _check_pixel_limit(header: _png.Header, limit: int) -> None:
    """Refuse declared dimensions over the limit before anything is inflated or allocated."""
    w, h = header.width, header.height
    if header.decoded_pixels > limit:
        deep = " of 16-bit samples (counted twice)" if header.bit_depth == 16 else ""
        raise InputError(f"declared dimensions {w}x{h} ({w * h} pixels{deep}) exceed the limit of {limit} pixels "
                         "(pixelrts.max_pixels)")


def _check_file_size(header: _png.Header, size: int, max_text: int) -> None:
    """A file larger than its declared pixels and text could need carries surplus data: refused unread."""
    limit = _png.max_file_size(header, max_text)
    if size > limit:
        raise CorruptedError(f"corrupted PNG: the file is {size} bytes, more than a {header.width}x{header.height} "
                             f"{header.colour_name} image can need ({limit}); surplus data is not read")


def read_png_bytes(path: str | os.PathLike[str], *, max_pixels: int | None = None,
                   max_metadata_bytes: int | None = None) -> bytes:
    """The bytes of the PNG at ``path``, read only when it is a regular file whose IHDR passes the pixel
    limit and whose size fits what that IHDR can need (FIFOs, devices, sockets: one InputError line)."""
    limit = max_pixels or DEFAULT_MAX_PIXELS
    max_text = max_metadata_bytes or DEFAULT_MAX_METADATA_BYTES
    with open_regular(path, what="an image file") as fh:
        prefix = fh.read(_png.HEADER_BYTES)
        header = _png.peek_header(prefix)
        if header is None:  # shorter than a header: the whole file is in ``prefix``
            return prefix
        _check_pixel_limit(header, limit)
        allowed = _png.max_file_size(header, max_text)
        size = os.fstat(fh.fileno()).st_size
        _check_file_size(header, size, max_text)
        fh.seek(0)
        # A buffer of the file's size, not of the bound (fresh pages are slow); one byte more notices growth.
        data = fh.read(size + 1)
        if len(data) > size:
            data += fh.read(allowed + 1 - len(data))
    _check_file_size(header, len(data), max_text)  # it grew while we read
    return data


def _sidecar_text(path: Path, max_bytes: int) -> tuple[str, str] | None:
    """(text, name) of the first sidecar that exists. A name that cannot exist (too long) is absent;
    one that is not a regular file is unreadable (exit 3); one over the size limit is invalid (exit 2)."""
    for candidate in md.sidecar_candidates(path):
        try:
            os.stat(candidate)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENAMETOOLONG, errno.ENOTDIR):
                continue
            raise InputError(f"cannot read sidecar {candidate.name}: {describe_oserror(exc)}") from None
        raw = read_regular(candidate, max_bytes=max_bytes, what="a sidecar (pixelrts.max_metadata_bytes)",
                           too_big=CorruptedError)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptedError(f"PixelRTS metadata in sidecar {candidate.name} is not UTF-8 text") from None
        return text, candidate.name
    return None


def _sidecar_metadata(path: Path, max_bytes: int) -> tuple[dict[str, Any], str] | None:
    found = _sidecar_text(path, max_bytes)
    return (parse_metadata(found[0], f"sidecar {found[1]}"), found[1]) if found else None


def _embedded_text(structure: _png.PngStructure) -> str | None:
    for _key, text in structure.texts:
        if text.startswith(md.TEXT_PREFIX + "{"):
            return text[len(md.TEXT_PREFIX) :]
    return None


def _embedded_metadata(structure: _png.PngStructure) -> dict[str, Any] | None:
    text = _embedded_text(structure)
    return parse_metadata(text, "the PNG tEXt chunk") if text is not None else None


_COMPARED_KEYS = ("format", "grid_size", "encoding", "data_hash", "data_size", "encoded_size", "compression", "hashes")


def _imdecode(data: bytes, structure: _png.PngStructure, *, proven: bool = False) -> tuple[np.ndarray, bool]:
    """(pixels, from_libpng) of PNG bytes whose pixel data is proven sound first (or already, ``proven``),
    so libpng never meets damage it would print about (from any thread). Unfiltered 8-bit RGBA (our
    encoder's output) comes from that proof's single inflate as RGBA; anything else is OpenCV's decode
    (BGR(A) order)."""
    if not proven:
        rgba = _png.decode_unfiltered(data, structure)
        if rgba is not None:
            return rgba, False
    arr = cv2.imdecode(np.frombuffer(_png.for_libpng(data, structure), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:  # the data was proven decodable: what is left is memory
        header = structure.header
        raise InputError(f"the {header.width}x{header.height} image could not be decoded (out of memory?)")
    return arr, True


def _decode_pixels(data: bytes, structure: _png.PngStructure, *, allow_bgra: bool = False,
                   proven: bool = False) -> tuple[np.ndarray, bool]:
    """(pixels, bgra): PNG bytes as an (h, w, 4) uint8 array, RGBA (other 8-bit colour types converted).

    With ``allow_bgra`` a 4-channel libpng decode is left in OpenCV's BGRA order, unconverted (``bgra`` True)."""
    arr, from_libpng = _imdecode(data, structure, proven=proven)
    if not from_libpng:
        return arr, False
    if arr.dtype != np.uint8:
        raise InputError(f"unsupported PNG: {arr.dtype} samples (PixelRTS v2 uses 8-bit RGBA)")
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGBA), False
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGBA), False
    if allow_bgra:
        return arr, True
    cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA, dst=arr)
    return arr, False


def decode_plain(data: bytes, structure: _png.PngStructure) -> np.ndarray:
    """Any PNG (any size, 16-bit reduced to 8) as an (h, w, 4) RGBA uint8 array, proven sound first."""
    arr, from_libpng = _imdecode(data, structure)
    if not from_libpng:
        return arr
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGBA)
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGBA)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA, dst=arr)  # in place: no second full-size copy


def read_structure(data: bytes, max_metadata_bytes: int | None = None) -> _png.PngStructure:
    """The checked chunk structure of PNG bytes (text chunks bounded by ``max_metadata_bytes``)."""
    return _png.parse_structure(data, check_idat_crc=False,
                                max_text_bytes=max_metadata_bytes or DEFAULT_MAX_METADATA_BYTES)


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    max_metadata_bytes: int | None = None,
    use_sidecar: bool = True,
    progress: Progress | None = None,
    data: bytes | None = None,
    file_hash: bool = False,
    payload_only: bool = False,
) -> PixelRTSImage:
    """Read and decode a PixelRTS v2 (or plain) PNG with fresh state.

    Raises InputError for input that cannot be judged (missing, not a regular file, not a PNG,
    unsupported, over the pixel limit) and CorruptedError for damage (truncated, CRC, surplus data,
    broken PixelRTS structure, metadata that is present but invalid or over ``max_metadata_bytes``).
    ``data`` may supply the file's bytes (an upload) instead of reading ``path``; ``file_hash``
    also records the sha256 of the whole file (``file_sha256``). ``payload_only`` skips keeping the
    RGBA pixel array (``pixels`` is None), which is what :func:`decode` needs.
    """
    progress = progress or _noop
    path = Path(path)
    limit = max_pixels or DEFAULT_MAX_PIXELS
    max_meta = max_metadata_bytes or DEFAULT_MAX_METADATA_BYTES
    if data is None:
        data = read_png_bytes(path, max_pixels=limit, max_metadata_bytes=max_meta)
    progress("checking structure", 0.0)
    structure = read_structure(data, max_meta)
    header = structure.header
    _check_pixel_limit(header, limit)
    _check_file_size(header, len(data), max_meta)

    embedded = _embedded_text(structure)
    side_text = _sidecar_text(path, max_meta) if use_sidecar and path.name else None
    claim = embedded is not None or side_text is not None
    damaged = CorruptedError if claim else InputError
    w, h = header.width, header.height
    if w != h:
        raise damaged(f"{'PixelRTS image' if claim else 'PNG'} is {w}x{h}: PixelRTS v2 images are square")
    if not is_power_of_two(w):
        raise damaged(f"{'PixelRTS image' if claim else 'PNG'} side {w} is not a power of two")
    if header.bit_depth == 16:
        raise damaged(f"unsupported PNG: 16-bit {header.colour_name} samples (PixelRTS v2 uses 8-bit RGBA)")

    # Checked only now, so that a broken container is named before what its metadata says.
    meta_text = parse_metadata(embedded, "the PNG tEXt chunk") if embedded is not None else None
    sidecar = (parse_metadata(side_text[0], f"sidecar {side_text[1]}"), side_text[1]) if side_text else None
    problems: list[Problem] = []
    if sidecar is not None:
        meta, source = sidecar[0], f"sidecar:{sidecar[1]}"
        if meta_text is not None:
            differing = [k for k in _COMPARED_KEYS if k in meta and k in meta_text and meta[k] != meta_text[k]]
            if differing:
                problems.append(
                    Problem("sidecar_mismatch", f"sidecar {sidecar[1]} and the embedded metadata disagree on {', '.join(differing)}")
                )
    elif meta_text is not None:
        meta, source = meta_text, "text"
    else:
        meta, source = None, None
    n = w
    capacity = 4 * n * n

    stored_length = capacity
    payload_limit = 4 * limit
    if meta is not None:
        data_size, encoded_size = meta.get("data_size"), meta.get("encoded_size")
        if data_size is not None and data_size > capacity and not meta.get("compression"):
            raise CorruptedError(f"PixelRTS metadata declares data_size {data_size} but a {n}x{n} grid holds only {capacity} bytes")
        if data_size is not None and data_size > payload_limit:
            raise InputError(f"PixelRTS metadata declares data_size {data_size}, more than the limit of {payload_limit} bytes "
                             "(4 x pixelrts.max_pixels)")
        payload_limit = data_size if data_size is not None else payload_limit
        if encoded_size is not None and encoded_size > capacity:
            raise CorruptedError(f"PixelRTS metadata declares encoded_size {encoded_size} but a {n}x{n} grid holds only {capacity} bytes")
        grid_meta = meta.get("grid_size")
        if grid_meta is not None and grid_meta != n:
            problems.append(Problem("structure", f"metadata grid_size {grid_meta} differs from the image width {n}"))
        if encoded_size is not None:
            stored_length = encoded_size
        elif data_size is not None:
            stored_length = data_size
        if meta.get("original_data_b64") is None and data_size is None and encoded_size is None:
            problems.append(Problem("metadata", "PixelRTS metadata has no data_size; the whole grid is read"))

    progress("decoding PNG", 0.0)
    fast = payload_only and header.colour_type == 6
    pixels: np.ndarray | None = None
    buffer = _stream_unfiltered(data, structure, n, progress) if fast else None
    if buffer is None:
        pixels, bgra = _decode_pixels(data, structure, allow_bgra=fast, proven=fast)
    file_size = len(data)
    file_sha256 = hashlib.sha256(data).hexdigest() if file_hash else None
    del data
    progress("decoding PNG", 1.0)
    if buffer is not None:
        stream = np.frombuffer(buffer, dtype=np.uint8)
    elif fast:
        buffer = _gather_stream(pixels, n, progress, bgra=bgra)
        stream = np.frombuffer(buffer, dtype=np.uint8)
        pixels = None
    else:
        stream = _pixels_to_stream(pixels.view(np.uint32).reshape(n, n), n, progress).view(np.uint8)
    return PixelRTSImage(
        path=path,
        grid_size=n,
        pixels=pixels,
        stream=stream,
        metadata=meta,
        metadata_source=source,
        stored_length=stored_length,
        file_size=file_size,
        file_sha256=file_sha256,
        png_info={"colour_type": header.colour_name, "bit_depth": header.bit_depth, "interlaced": bool(header.interlace),
                  "chunks": structure.chunk_types[:64]},
        problems=problems,
        payload_limit=payload_limit,
        _buffer=buffer,
    )


def _payload_from(meta: dict[str, Any] | None, stream: np.ndarray, stored_length: int,
                  limit: int) -> _compress.Decompressed:
    """The payload, decompressed by its stream's magic whatever the label says (PIXELRTS_V2.md §3).

    Code mode reads ``original_data_b64``: with compression their writer (and ours) put the compressed
    bytes there; a copy that is already the original (our earlier files) is taken as it is."""
    label = _compress.label_of(meta)
    if meta is not None and meta.get("original_data_b64") is not None:
        try:
            raw = base64.b64decode(meta["original_data_b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise CorruptedError("PixelRTS metadata field original_data_b64 is not valid base64") from None
        if label is not None and len(raw) == meta.get("data_size") and hashlib.sha256(raw).hexdigest() == meta["data_hash"].lower():
            label = None
        return _compress.decompress(label, raw, limit)
    return _compress.decompress(label, stream[:stored_length].tobytes(), limit)


# ----------------------------------------------------------------------------- verification

def verify_image(image: PixelRTSImage) -> VerifyReport:
    """Check a decoded image: data hash, segment hashes, zero padding, metadata consistency."""
    problems = list(image.problems)
    meta = image.metadata
    hash_verified: bool | None = None
    pad_start = image.padding_start()
    tail = image.stream[pad_start:]
    if tail.size and tail.any():
        nz = np.flatnonzero(tail)
        first, last = pad_start + int(nz[0]), pad_start + int(nz[-1]) + 1
        problems.append(Problem("padding", f"{nz.size} non-zero byte(s) in the padding after the payload, at [{first}, {last})", (first, last)))
    if meta is not None:
        expected = meta.get("data_hash")
        try:
            payload = image.payload_view()
        except CorruptedError as exc:
            payload = None
            problems.append(Problem("hash_mismatch", str(exc), (0, image.stored_length)))
            hash_verified = False
        if payload is not None:
            size = meta.get("data_size")
            if isinstance(size, int) and len(payload) != size:
                problems.append(Problem("metadata", f"payload is {len(payload)} bytes but data_size says {size}"))
            # The schema (healing.pixelrts._schema) guarantees the types used here.
            actual = hashlib.sha256(payload).hexdigest()
            hash_verified = actual == expected.lower()
            if not hash_verified:
                problems.append(Problem("hash_mismatch", f"sha256 of the payload is {actual[:16]}…, metadata says {expected[:16]}…",
                                        (0, image.stored_length)))
            hashes = meta.get("hashes") or {}
            if "data" in hashes and hashes["data"].lower() != expected.lower():
                problems.append(Problem("metadata", "hashes.data differs from data_hash"))
            for name, seg in (meta.get("offsets") or {}).items():
                if "start" not in seg or "size" not in seg:
                    continue  # their converter writes segments without start: nothing to check against
                want = hashes.get(name) or seg.get("sha256")
                start, size = seg["start"], seg["size"]
                if start + size > len(payload):
                    problems.append(Problem("segment_mismatch", f"segment {name!r} [{start}, {start + size}) lies outside the payload"))
                    continue
                if isinstance(want, str) and hashlib.sha256(payload[start : start + size]).hexdigest() != want.lower():
                    problems.append(Problem("segment_mismatch", f"segment {name!r} [{start}, {start + size}) does not match its sha256",
                                            (start, start + size)))
    ok = meta is not None and hash_verified is True and not problems
    notes = [image.compression_note] if image.compression_note else []
    return VerifyReport(ok=ok, hash_verified=hash_verified, problems=problems, image=image, notes=notes)


def verify(path: str | os.PathLike[str], **read_options: Any) -> VerifyReport:
    """Read ``path`` and verify it (see :func:`verify_image`)."""
    return verify_image(read_image(path, **read_options))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The PixelRTS metadata of ``path`` (sidecar first, then the tEXt chunk) without decoding pixels."""
    path = Path(path)
    structure = read_structure(read_png_bytes(path))
    sidecar = _sidecar_metadata(path, DEFAULT_MAX_METADATA_BYTES)
    meta = sidecar[0] if sidecar else _embedded_metadata(structure)
    if meta is None:
        raise InputError(f"{path}: not a PixelRTS image (no PixelRTS metadata)")
    return meta


def decode(path: str | os.PathLike[str], *, verify: bool = False, **read_options: Any) -> bytes | bytearray:
    """The original payload of ``path``; with ``verify`` any integrity problem raises CorruptedError.

    Returns ``bytes``, or for large verbatim payloads the ``bytearray`` the pixels were gathered into
    (saving a full copy); both compare equal to the original bytes and write the same.
    """
    image = read_image(path, payload_only=True, **read_options)
    if verify:
        if not image.is_pixelrts:
            raise InputError(f"{path}: not a PixelRTS image (no metadata), nothing to verify against")
        report = verify_image(image)
        if report.problems:
            raise CorruptedError(f"{path}: {report.problems[0].message}")
    return image.take_payload()


def decode_range(path: str | os.PathLike[str], start: int, count: int, **read_options: Any) -> bytes:
    """``count`` bytes of the payload from offset ``start`` (clipped at the end of the payload).

    For uncompressed standard-mode images only the pixels that hold the range are gathered.
    """
    if start < 0 or count < 0:
        raise UsageError(f"decode_range needs start ≥ 0 and count ≥ 0, got {start}, {count}")
    path = Path(path)
    limit = read_options.get("max_pixels") or DEFAULT_MAX_PIXELS
    max_meta = read_options.get("max_metadata_bytes") or DEFAULT_MAX_METADATA_BYTES
    data = read_png_bytes(path, max_pixels=limit, max_metadata_bytes=max_meta)
    structure = read_structure(data, max_meta)
    sidecar = _sidecar_metadata(path, max_meta)
    meta = sidecar[0] if sidecar else _embedded_metadata(structure)
    simple = meta is None or (not meta.get("compression") and meta.get("original_data_b64") is None)
    if not simple:
        return read_image(path, data=data, **read_options).payload[start : start + count]
    header = structure.header
    n = header.width
    if n != header.height or not is_power_of_two(n) or header.bit_depth == 16:
        return read_image(path, data=data, **read_options).payload[start : start + count]
    length = 4 * n * n
    if meta is not None and isinstance(meta.get("data_size"), int):
        length = min(length, meta["data_size"])
    stop = min(start + count, length)
    if stop <= start:
        return b""
    pixels, _ = _decode_pixels(data, structure)
    del data
    first_px, last_px = start // 4, -(-stop // 4)
    words = _pixels_to_stream(pixels.view(np.uint32).reshape(n, n), n, _noop, first_px, last_px - first_px)
    raw = words.view(np.uint8).tobytes()
    return raw[start - 4 * first_px : stop - 4 * first_px]
