"""What Geometry OS's pixel_compiler writes and how its tools read, rebuilt from PIXELRTS_V2.md alone
(PIL, zlib, base64 and the scalar d2xy; nothing from ``healing``), so that our codec is tested against
files our encoder did not make and our files against a reader that is not ours.

The writer reproduces their quirks on purpose: "zstd-h5" labels over zlib bytes (§3), the compressed
bytes in ``original_data_b64`` in code mode (§3), segment entries without ``start`` (§3), their
opcode tables with their mistakes (§6), the older writers' grid rule for tiny inputs (§2).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from tests.pixelrts.spec_writer import spec_d2xy


# ---------------------------------------------------------------------------- a sample module
def _section(section_id: int, payload: bytes) -> bytes:
    assert len(payload) < 128  # one-byte LEB128 sizes keep the module readable
    return bytes([section_id, len(payload)]) + payload


# A real module, written by hand: func 0 (exported "add") = local.get 0, local.get 1, i32.add; func 1 loops
# with i32.clz (0x67), local.tee, i32.eqz, br_if and drop (0x1A): opcodes their tables get wrong.
_ADD_BODY = bytes.fromhex("00" "2000" "2001" "6a" "0b")
_LOOP_BODY = bytes.fromhex("00" "0340" "2000" "67" "4101" "6b" "2200" "45" "0d00" "2000" "1a" "0b" "2000" "0b")
LOOP_WASM = (
    b"\x00asm\x01\x00\x00\x00"
    + _section(1, bytes.fromhex("01" "60" "02" "7f7f" "01" "7f"))  # one type: (i32, i32) -> i32
    + _section(3, bytes.fromhex("02" "00" "00"))  # two functions of type 0
    + _section(7, bytes.fromhex("01" "03") + b"add" + bytes.fromhex("00" "00"))  # export "add" = func 0
    + _section(10, b"\x02" + bytes([len(_ADD_BODY)]) + _ADD_BODY + bytes([len(_LOOP_BODY)]) + _LOOP_BODY)
)


# ---------------------------------------------------------------------------- §6, transcribed
# R weight per first byte of a 4-byte group, exactly the spec's list; the "parametric" entries only
# switch alpha on.
_RED_BY_SPEC: list[tuple[list[int], int]] = [
    ([0x00], 255),
    ([0x02, 0x03, 0x04], 200),
    ([0x0C, 0x0D, 0x0F, 0x10], 150),
    ([0x01], 0),
    ([0x05, 0x0B, 0x0E, 0x11], 100),
    ([*range(0x45, 0x67), *range(0x6A, 0x79), *range(0x7C, 0x8B), *range(0x92, 0x98), *range(0xA0, 0xA6)], 80),
    ([*range(0x20, 0x25), *range(0x28, 0x41)], 50),
    ([*range(0x41, 0x45)], 30),
]
_PARAMETRIC = [0x0A, 0x1B, 0x1C]


def their_red(op: int) -> int:
    for ops, weight in _RED_BY_SPEC:
        if op in ops:
            return weight
    return 0


def their_alpha(op: int) -> int:
    listed = any(op in ops for ops, _ in _RED_BY_SPEC) or op in _PARAMETRIC
    return 255 if listed else 0


def code_stream(data: bytes) -> bytes:
    """Their code-mode bytes: each 4-byte group b0..b3 → (R(b0), b1, b2, A(b0)); b3 dropped."""
    out = bytearray()
    padded = data + b"\0" * (-len(data) % 4)
    for i in range(0, len(padded), 4):
        b0, b1, b2 = padded[i], padded[i + 1], padded[i + 2]
        out += bytes((their_red(b0), b1, b2, their_alpha(b0)))
    return bytes(out)


# ---------------------------------------------------------------------------- §2
def their_grid(length: int, *, legacy: bool = False) -> int:
    if length == 0:
        return 1
    aligned = length if legacy else (length + 63) // 64 * 64
    side = math.ceil(math.sqrt(math.ceil(aligned / 4)))
    n = 1
    while n < side:
        n *= 2
    return n


# ---------------------------------------------------------------------------- writer
@dataclass
class Written:
    path: Path
    meta: dict[str, Any]
    stream: bytes  # the bytes laid along the curve (before zero padding)
    pixels: list[tuple[int, int, int, int]]  # row-major RGBA of the whole grid


def write_geometry(
    path: Path,
    data: bytes,
    *,
    mode: str = "standard",
    compression: str | None = None,
    level: int = 6,
    caller: dict[str, Any] | None = None,
    converter_segments: dict[str, dict[str, Any]] | None = None,
    legacy_grid: bool = False,
    sidecar: bool = False,
    blueprint: bool = False,
) -> Written:
    """Write ``data`` the way their encoder does. ``compression`` "zlib" or "zstd-h5" (zlib bytes under a
    zstd label, what their encoder does with zstandard installed). ``converter_segments`` are their
    converter's entries ({"type", "size", ...}, no ``start``); their sha256 is taken of the whole input,
    as the converter hashes each segment file it packs. ``sidecar`` writes ``<image>.meta.json`` with
    ``user_metadata``; ``blueprint`` adds their optional second tEXt chunk."""
    stored = data
    compression_meta = None
    if compression is not None:
        stored = zlib.compress(data, level)  # "zstd-h5" too: their fallback
        compression_meta = {"type": compression, "level": level, "original_size": len(data),
                            "compressed_size": len(stored), "ratio": len(stored) / len(data) if data else 1.0}
    encoding = "RGBA-code" if mode == "code" else "RGBA-dense"
    stream = code_stream(stored) if mode == "code" and stored[:4] == b"\x00asm" else stored
    n = their_grid(len(stream), legacy=legacy_grid)

    offsets: dict[str, dict[str, Any]] = {}
    hashes: dict[str, str] = {}
    for name, entry in (converter_segments or {}).items():
        offsets[name] = {"type": entry["type"], "size": entry["size"], "sha256": entry["sha256"]}
        hashes[name] = entry["sha256"]
    meta: dict[str, Any] = {
        "format": "PixelRTS-2.0",
        "format_version": 2,
        "grid_size": n,
        "encoding": {"type": encoding, "bytes_per_pixel": 4, "mapping": "Hilbert space-filling curve"},
        "offsets": offsets,
        "hashes": hashes,
        "encoding_mode": encoding,
    }
    for key, value in (caller or {}).items():
        meta["content_version" if key == "version" else key] = value
    meta["data_hash"] = hashlib.sha256(data).hexdigest()
    meta["data_size"] = len(data)
    if compression_meta is not None:
        meta["compression"] = compression_meta
        meta["encoded_size"] = len(stored)
    if mode == "code":
        meta["original_data_b64"] = base64.b64encode(stored).decode("ascii")

    grid: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * (n * n)
    padded = stream + b"\0" * (-len(stream) % 4)
    for i in range(len(padded) // 4):
        x, y = spec_d2xy(n, i)
        grid[y * n + x] = tuple(padded[4 * i : 4 * i + 4])  # type: ignore[assignment]
    img = Image.new("RGBA", (n, n))
    img.putdata(grid)
    info = PngImagePlugin.PngInfo()
    info.add_text("PixelRTS", "PixelRTS" + json.dumps(meta, separators=(",", ":")))
    if blueprint:
        info.add_text("PixelRTS-Blueprint", "PixelRTS-Blueprint" + json.dumps({"layout": "linear", "regions": []}))
    img.save(path, "PNG", pnginfo=info)
    if sidecar:
        side = dict(meta, user_metadata={"source": "converter", "note": "packed by pixelrts_converter"})
        path.with_name(path.name + ".meta.json").write_text(json.dumps(side, indent=2))
    return Written(path, meta, stream, grid)


# ---------------------------------------------------------------------------- reader (§3–§5)
@dataclass
class Read:
    meta: dict[str, Any]
    payload: bytes
    stream_kind: str  # what the stored bytes were: "zlib" | "zstd" | "none"
    segments_verified: list[str]
    segments_skipped: list[str]  # no start/size: their segment verifier cannot check these


class SpecReadError(Exception):
    pass


def read_geometry(path: Path) -> Read:
    """Read a PixelRTS v2 file as the spec says their tools do, and verify it as their verifiers do
    (data hash, hashes["data"], every segment with start and size; the others are skipped, as their
    segment verifier skips them): SpecReadError on any failure."""
    meta = None
    for candidate in (path.with_name(path.name + ".meta.json"), path.with_name(path.name[:-4] + ".meta.json")):
        if candidate.exists():
            meta = json.loads(candidate.read_text())
            break
    img = Image.open(path)
    if meta is None:
        for value in img.text.values():
            if value.startswith("PixelRTS{"):
                meta = json.loads(value[len("PixelRTS") :])
    if meta is None:
        raise SpecReadError("no PixelRTS metadata")
    rgba = img.convert("RGBA")
    n = rgba.width
    raw = rgba.tobytes()  # row-major RGBA
    length = meta.get("encoded_size", meta.get("data_size", 4 * n * n))
    stored = bytearray()
    for i in range(-(-length // 4)):
        x, y = spec_d2xy(n, i)
        stored += raw[4 * (y * n + x) : 4 * (y * n + x) + 4]
    stored = bytes(stored[:length])
    if meta.get("original_data_b64") is not None:
        stored = base64.b64decode(meta["original_data_b64"])
    kind = "none"
    if (meta.get("compression") or {}).get("type", "none") != "none":
        if stored[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            payload, kind = zstandard.ZstdDecompressor().decompress(stored), "zstd"
        else:
            payload, kind = zlib.decompress(stored), "zlib"
    else:
        payload = stored
    if hashlib.sha256(payload).hexdigest() != meta["data_hash"] or len(payload) != meta["data_size"]:
        raise SpecReadError("data_hash mismatch")
    if "data" in meta.get("hashes", {}) and meta["hashes"]["data"] != meta["data_hash"]:
        raise SpecReadError("hashes.data differs from data_hash")
    verified, skipped = [], []
    for name, seg in meta.get("offsets", {}).items():
        if "start" not in seg or "size" not in seg:
            skipped.append(name)
            continue
        piece = payload[seg["start"] : seg["start"] + seg["size"]]
        if len(piece) != seg["size"] or hashlib.sha256(piece).hexdigest() != meta["hashes"].get(name):
            raise SpecReadError(f"segment {name} hash mismatch")
        verified.append(name)
    return Read(meta, payload, kind, verified, skipped)
