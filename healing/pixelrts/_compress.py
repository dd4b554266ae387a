"""Payload compression of PixelRTS v2 (PIXELRTS_V2.md §3).

The stream's own magic decides how it is read, not the metadata label: Geometry OS's encoder, with
the ``zstandard`` package installed, labels its payloads ``"zstd-h5"`` but stores zlib (its
compressor calls a method python-zstandard lacks and silently falls back). Such a file is sound; the
mismatch is reported as an informational note, never as corruption. Every inflate is bounded by the
declared size, so a small stream cannot expand into a memory bomb.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from healing.errors import CorruptedError, DependencyError, UsageError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZLIB_LEVEL = 9  # what we write for "zlib" (the most compact; PNG's own level is separate)
ZSTD_LEVEL = 9  # well past zstd's default 3 in ratio, still fast enough for a 64 MiB image
ZSTD_LABEL = "zstd-h5"  # the only zstd label their tools know
WRITABLE = ("zlib", "zstd")
_READ_CHUNK = 1 << 20  # zstd output counted in pieces of this size while the bound is checked


@dataclass(frozen=True)
class Decompressed:
    data: bytes
    stream: str  # "zlib" | "zstd" | "none": what the bytes really were
    note: str | None  # label and stream disagree (informational)


def stream_kind(head: bytes) -> str | None:
    """"zstd" for a zstd frame, "zlib" for a valid zlib header (deflate, window ≤ 32 KiB, FCHECK
    correct, no preset dictionary), else None."""
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    if len(head) >= 2:
        cmf, flg = head[0], head[1]
        if cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0 and not flg & 0x20:
            return "zlib"
    return None


def label_of(meta: dict[str, Any] | None) -> str | None:
    """The compression label of the metadata, lower-case; None when the payload is not compressed."""
    comp = (meta or {}).get("compression")
    if not comp:
        return None
    label = str(comp.get("type", "none")).lower()
    return None if label == "none" else label


def _family(label: str) -> str | None:
    if label == "zlib":
        return "zlib"
    if label.startswith("zstd"):
        return "zstd"
    return None


def label_note(label: str | None, head: bytes) -> str | None:
    """An informational phrase when a compressed payload's label and its stream's magic disagree."""
    if label is None:
        return None
    kind = stream_kind(head)
    if kind is None or _family(label) == kind:
        return None
    return (f"payload labelled {label!r} holds a {kind} stream (Geometry OS's encoder writes zlib under "
            f"'zstd-h5' when zstandard is installed); read as {kind}")


def decompress(label: str | None, stored: bytes, limit: int) -> Decompressed:
    """The payload behind ``stored`` (labelled ``label``), never inflated past ``limit`` bytes.

    Raises CorruptedError for a damaged stream, one that expands past ``limit``, or a compressed
    label over bytes that are neither zlib nor zstd; DependencyError for zstd without zstandard."""
    if label is None:
        return Decompressed(stored, "none", None)
    kind = stream_kind(stored[:4])
    if kind is None:
        family = _family(label)
        if family is None:
            raise CorruptedError(f"unknown compression type {label!r} in PixelRTS metadata, and the payload is "
                                 "neither a zlib nor a zstd stream")
        raise CorruptedError(f"compressed payload is damaged: labelled {label!r} but it starts with "
                             f"{stored[:4].hex(' ') or 'nothing'}, neither a zlib header nor the zstd magic")
    data = _inflate(stored, limit) if kind == "zlib" else _unzstd(stored, limit)
    return Decompressed(data, kind, label_note(label, stored[:4]))


def _inflate(stored: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(stored, limit + 1)
    except zlib.error as exc:
        raise CorruptedError(f"compressed payload is damaged (zlib: {exc})") from None
    if len(out) > limit:
        raise CorruptedError(f"compressed payload inflates to more than the {limit} bytes declared")
    if not inflater.eof:
        raise CorruptedError("compressed payload is damaged (zlib: incomplete or truncated stream)")
    return out


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise DependencyError("this image is zstd-compressed: install the 'zstandard' package "
                              "(pip install 'selfheal[zstd]')") from None
    return zstandard


def _unzstd(stored: bytes, limit: int) -> bytes:
    zstandard = _zstandard()
    dctx = zstandard.ZstdDecompressor()
    try:
        # python-zstandard's one-shot decompress trusts the frame's declared content size over
        # max_output_size: the output is first counted through a bounded reader, then produced.
        total = 0
        with dctx.stream_reader(stored, read_across_frames=True) as reader:
            while total <= limit:
                piece = reader.read(min(_READ_CHUNK, limit + 1 - total))
                if not piece:
                    break
                total += len(piece)
        if total > limit:
            raise CorruptedError(f"compressed payload inflates to more than the {limit} bytes declared")
        parts, rest = [], stored
        while rest:
            obj = dctx.decompressobj()
            parts.append(obj.decompress(rest))
            if not obj.eof:
                raise CorruptedError("compressed payload is damaged (zstd: incomplete or truncated frame)")
            rest = obj.unused_data
    except zstandard.ZstdError as exc:
        raise CorruptedError(f"compressed payload is damaged (zstd: {exc})") from None
    return b"".join(parts)


def require_zstandard() -> Any:
    """The zstandard module for writing zstd, or DependencyError (exit 3) in one line."""
    try:
        import zstandard
    except ImportError:
        raise DependencyError("--compress zstd needs the optional 'zstandard' package "
                              "(pip install 'selfheal[zstd]'); --compress zlib needs nothing") from None
    return zstandard


def compress(data: bytes, kind: str) -> tuple[bytes, dict[str, Any]]:
    """(stored bytes, the ``compression`` metadata) for ``kind`` "zlib" or "zstd", as their writer
    records it; zstd is labelled "zstd-h5" and needs the optional zstandard package."""
    if kind == "zlib":
        stored, label, level = zlib.compress(data, ZLIB_LEVEL), "zlib", ZLIB_LEVEL
    elif kind == "zstd":
        zstandard = require_zstandard()
        stored = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)
        label, level = ZSTD_LABEL, ZSTD_LEVEL
    else:
        raise UsageError(f"compression must be zlib, zstd or none when writing, got {kind!r}")
    return stored, {
        "type": label,
        "level": level,
        "original_size": len(data),
        "compressed_size": len(stored),
        "ratio": round(len(stored) / len(data), 4) if data else 1.0,
    }
