"""A corpus of hostile inputs for the image commands, and the child-process runner that feeds it to them.

:func:`build_corpus` mutates valid images written by our encoder and by the independent spec writer
(tests/pixelrts/spec_writer.py): truncation at many offsets, broken CRCs, every chunk's body changed
with its CRC fixed, IHDR dimensions/bit depths/colour types/interlace, zlib bombs in IDAT and text
chunks, surplus IDAT data, crafted metadata (NaN, Infinity, huge integers, deep nesting, wrong types,
huge), conflicting and non-regular sidecars, FIFOs, devices, sockets, symlinks and odd names. Each case
names what every command must answer (exit codes per DESIGN.md §4).

``python -m tests.security.hostile_corpus CASES.json RESULTS.jsonl`` runs the commands in-process
(``healing.cli.main``) under a 1 GiB address-space limit, capturing stdout/stderr at the file-descriptor
level (so a C library's own writes are caught too), with a per-run time limit, one JSON line per run.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COMMANDS = ("validate", "validate --json", "info", "info --json", "check --json", "decode --verify", "register")
ADDRESS_SPACE = 1 << 30
RUN_LIMIT_S = 10.0
CORPUS_MAX_PIXELS = 1 << 20  # the corpus runs with this pixel limit: 4 MiB of RGBA per image at most
SIG = b"\x89PNG\r\n\x1a\n"

# What each command answers for a kind of input: an exit code or the codes allowed.
KINDS: dict[str, dict[str, int | tuple[int, ...]]] = {
    "valid": {"validate": 0, "info": 0, "check": 0, "decode": 0, "register": 0},
    # the container or the metadata is broken: every command says so, info included
    "container": {"validate": 2, "info": 2, "check": 2, "decode": 2, "register": 2},
    # the container reads, the payload does not verify: info shows it, the rest call it corrupted
    "payload": {"validate": 2, "info": 0, "check": 2, "decode": 2, "register": 2},
    # a random change with a fixed CRC: the zlib stream may break (container) or only the payload
    "damaged": {"validate": 2, "info": (0, 2), "check": 2, "decode": 2, "register": 2},
    "unknown": {"validate": 3, "info": 3, "check": 3, "decode": 3, "register": 3},
    # a plain square PNG: nothing to verify against; statistics decide check
    "plain": {"validate": 3, "info": 0, "check": (0, 1, 2), "decode": 3, "register": 0},
    # a plain PNG of another shape: not a grid (codec commands: unknown), statistics decide check
    "plain-shape": {"validate": 3, "info": 3, "check": (0, 1, 2), "decode": 3, "register": 3},
}


@dataclass
class Case:
    name: str
    path: str
    kind: str
    mutation: str  # the class of mutation, for the per-class summary
    override: dict[str, Any] = field(default_factory=dict)

    def expected(self, command: str) -> tuple[int, ...]:
        base = command.split()[0]
        want = self.override.get(base, KINDS[self.kind][base])
        return want if isinstance(want, tuple) else (want,)


# --------------------------------------------------------------------------- PNG surgery

def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(ctype)))


def chunks(png: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, body) of every chunk of a well-formed PNG, up to IEND."""
    out, pos = [], 8
    while pos + 12 <= len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        ctype = png[pos + 4 : pos + 8]
        out.append((pos, ctype, png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if ctype == b"IEND":
            break
    return out


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return SIG + b"".join(chunk(t, b) for t, b in parts)


def parts_of(png: bytes) -> list[tuple[bytes, bytes]]:
    return [(t, b) for _, t, b in chunks(png)]


def with_chunk(png: bytes, ctype: bytes, body: bytes, before: bytes = b"IDAT") -> bytes:
    """``png`` with a chunk inserted before the first ``before`` chunk."""
    parts = parts_of(png)
    at = next(i for i, (t, _) in enumerate(parts) if t == before)
    return assemble(parts[:at] + [(ctype, body)] + parts[at:])


def replace_bodies(png: bytes, ctype: bytes, fn: Callable[[bytes], bytes | None]) -> bytes:
    """Each ``ctype`` chunk's body replaced by ``fn(body)`` (None drops the chunk); CRCs recomputed."""
    out = []
    for t, b in parts_of(png):
        if t == ctype:
            new = fn(b)
            if new is None:
                continue
            b = new
        out.append((t, b))
    return assemble(out)


def metadata_text(png: bytes) -> dict[str, Any]:
    for t, b in parts_of(png):
        if t == b"tEXt" and b.startswith(b"PixelRTS\0PixelRTS{"):
            return json.loads(b[len(b"PixelRTS\0PixelRTS") :])
    raise ValueError("no PixelRTS tEXt chunk")


def with_metadata(png: bytes, text: str | bytes) -> bytes:
    """``png`` with its PixelRTS tEXt chunk holding ``text`` (raw JSON, not checked) after the prefix."""
    raw = text.encode("latin-1") if isinstance(text, str) else text
    return replace_bodies(png, b"tEXt", lambda b: b"PixelRTS\0PixelRTS" + raw if b.startswith(b"PixelRTS\0") else b)


def ihdr(w: int, h: int, depth: int = 8, colour: int = 6, interlace: int = 0, comp: int = 0, filt: int = 0) -> bytes:
    return struct.pack(">IIBBBBB", w, h, depth, colour, comp, filt, interlace)


def with_ihdr(png: bytes, **fields: int) -> bytes:
    def change(body: bytes) -> bytes:
        w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
        now = {"w": w, "h": h, "depth": depth, "colour": colour, "comp": comp, "filt": filt, "interlace": interlace}
        now.update(fields)
        return ihdr(**now)

    return replace_bodies(png, b"IHDR", change)


def raw_png(w: int, h: int, rows: bytes, *, depth: int = 8, colour: int = 6, interlace: int = 0,
            extra: list[tuple[bytes, bytes]] | None = None, idat: bytes | None = None) -> bytes:
    """A PNG from already-filtered scanlines ``rows`` (or a given IDAT body)."""
    body = idat if idat is not None else zlib.compress(rows, 9)
    return assemble([(b"IHDR", ihdr(w, h, depth, colour, interlace)), *(extra or []), (b"IDAT", body), (b"IEND", b"")])


def interlaced_rgba(pixels: list[list[tuple[int, int, int, int]]]) -> bytes:
    """Adam7 scanlines (filter 0) of an RGBA image given as rows of pixels."""
    h, w = len(pixels), len(pixels[0])
    out = bytearray()
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        xs, ys = range(x0, w, dx), range(y0, h, dy)
        if not xs or not ys:
            continue
        for y in ys:
            out.append(0)
            for x in xs:
                out.extend(pixels[y][x])
    return bytes(out)


# --------------------------------------------------------------------------- the corpus

class _Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: list[Case] = []
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, data: bytes | None, kind: str, mutation: str, **override: Any) -> Path:
        path = self.root / f"{len(self.cases):03d}-{name}.rts.png"
        if data is not None:
            path.write_bytes(data)
        self.cases.append(Case(path.name, str(path), kind, mutation, override))
        return path


def build_corpus(root: Path) -> list[Case]:
    """Write every hostile file under ``root``; returns the cases (≥ 300)."""
    from healing.pixelrts import write_image
    from tests.pixelrts.spec_writer import write_spec_image

    c = _Corpus(root)
    src = root / "sources"
    src.mkdir(parents=True, exist_ok=True)
    payload = bytes((i * 37 + 11) % 256 for i in range(3000))
    write_image(payload, src / "ours.rts.png", metadata={"name": "kernel", "type": "kernel"}, grid_size=32)
    ours = (src / "ours.rts.png").read_bytes()
    ours_sidecar = (src / "ours.rts.png.meta.json").read_text()
    write_image(payload, src / "oursz.rts.png", compression="zlib")
    ours_zlib = (src / "oursz.rts.png").read_bytes()
    write_image(b"\0asm\x01\0\0\0" + bytes(range(40)), src / "code.rts.png", mode="code")
    ours_code = (src / "code.rts.png").read_bytes()
    spec_data = b"spec-writer payload " * 10
    write_spec_image(src / "spec.rts.png", spec_data, 8)
    spec = (src / "spec.rts.png").read_bytes()
    write_spec_image(src / "segs.rts.png", spec_data, 8,
                     extra={"offsets": {"head": {"start": 0, "size": 20}},
                            "hashes": {"head": __import__("hashlib").sha256(spec_data[:20]).hexdigest()}})
    segs = (src / "segs.rts.png").read_bytes()
    sources = {"ours": ours, "spec": spec}

    # Valid images from both writers (and their variants) stay valid.
    for name, data in (("ours", ours), ("ours-zlib", ours_zlib), ("ours-code", ours_code), ("spec", spec), ("spec-segments", segs)):
        c.add(f"valid-{name}", data, "valid", "valid")
    c.add("valid-with-sidecar", ours, "valid", "valid")
    Path(c.cases[-1].path + ".meta.json").write_text(ours_sidecar)
    c.add("valid-trailing-bytes-after-iend", ours + b"garbage after IEND", "valid", "valid")
    zmeta = zlib.compress(b"PixelRTS" + json.dumps(metadata_text(spec), separators=(",", ":")).encode())
    no_text = replace_bodies(spec, b"tEXt", lambda b: None)
    c.add("valid-metadata-in-ztxt", with_chunk(no_text, b"zTXt", b"PixelRTS\0\0" + zmeta), "valid", "valid")
    for extra in (b"gAMA", b"sRGB", b"pHYs", b"tIME", b"prVt", b"iCCP", b"bKGD", b"sBIT"):
        body = {b"gAMA": struct.pack(">I", 45455), b"sRGB": b"\0", b"pHYs": struct.pack(">IIB", 2835, 2835, 1),
                b"tIME": struct.pack(">HBBBBB", 2026, 12, 1, 12, 0, 0), b"iCCP": b"bogus\0\0" + zlib.compress(b"not an ICC profile"),
                b"bKGD": struct.pack(">HHH", 1, 2, 3), b"sBIT": b"\x08\x08\x08\x08"}.get(extra, b"private data")
        c.add(f"valid-ancillary-{extra.decode()}", with_chunk(spec, extra, body), "valid", "ancillary chunks")
    rows = [[(x * 16, y * 16, (x + y) % 256, 255 if (x + y) % 3 else 0) for x in range(8)] for y in range(8)]
    meta8 = dict(metadata_text(spec))
    flat = bytes(v for y in range(8) for x in range(8) for v in rows[y][x])
    c.add("plain-interlaced-rgba", raw_png(8, 8, interlaced_rgba(rows), interlace=1), "plain", "interlace")
    c.add("pixelrts-interlaced", raw_png(8, 8, interlaced_rgba(rows), interlace=1,
                                         extra=[(b"tEXt", b"PixelRTS\0PixelRTS" + json.dumps(meta8).encode())]),
          "payload", "interlace")
    c.add("plain-rgba", raw_png(8, 8, b"".join(b"\0" + flat[32 * y : 32 * y + 32] for y in range(8))), "plain", "plain")
    c.add("plain-grey-nonsquare", raw_png(5, 3, b"".join(b"\0" + bytes([y * 40] * 5) for y in range(3)), colour=0),
          "plain-shape", "plain")
    c.add("plain-palette-short", raw_png(8, 8, b"".join(b"\0" + bytes([0x12, 0x30, 0x00, 0x0F]) for _ in range(8)), depth=4, colour=3,
                                         extra=[(b"PLTE", bytes(range(9)))]), "plain", "plain")
    c.add("plain-16bit", raw_png(4, 4, b"".join(b"\0" + bytes(32) for _ in range(4)), depth=16), "unknown", "bit depth")
    c.add("plain-16bit-nonsquare", raw_png(4, 2, b"".join(b"\0" + bytes(32) for _ in range(2)), depth=16),
          "plain-shape", "bit depth")
    c.add("plain-1bit-grey", raw_png(8, 8, b"".join(b"\0\xa5" for _ in range(8)), depth=1, colour=0), "plain", "bit depth")
    c.add("plain-palette-no-plte", raw_png(8, 8, b"".join(b"\0" + bytes(8) for _ in range(8)), colour=3), "container", "chunk rules")
    c.add("plain-bad-filter-type", raw_png(8, 8, b"".join(b"\x07" + bytes(32) for _ in range(8))), "container", "zlib/filters")
    c.add("plain-short-scanlines", raw_png(8, 8, b"\0" * 100), "container", "zlib/filters")
    c.add("plain-long-scanlines", raw_png(8, 8, b"\0" * 400), "container", "zlib/filters")

    # Truncation at many offsets, both writers.
    for label, data in sources.items():
        cuts = sorted({0, 1, 4, 7, 8, 12, 20, 32, 33, 40} | set(range(41, len(data), max(1, len(data) // 36))) | {len(data) - 1, len(data) - 6})
        for cut in cuts:
            kind = "unknown" if cut == 0 else "container"
            c.add(f"truncated-{label}-{cut}", data[:cut], kind, "truncation")

    # A broken CRC in each chunk, and each chunk's body changed with the CRC fixed.
    for label, data in sources.items():
        for i, (pos, ctype, body) in enumerate(chunks(data)):
            broken = bytearray(data)
            broken[pos + 8 + len(body)] ^= 0x5A
            c.add(f"crc-{label}-{i}-{ctype.decode()}", bytes(broken), "container", "crc")
            if not body:
                continue
            # Which byte changes, and what that must be: IHDR width (out of range), height (x 0xFF0000:
            # over the pixel limit), interlace (invalid); tEXt keyword (not checked by readers), a data_hash
            # digit (not hex), the closing brace (not JSON); IDAT header, middle, checksum.
            if ctype == b"IHDR":
                picks = {0: "container", 5: "unknown", 12: "container"}
            elif ctype == b"tEXt":
                picks = {0: "valid", body.index(b'"data_hash":"') + 20: "container", len(body) - 1: "container"}
            else:
                picks = {0: "damaged", len(body) // 2: "damaged", len(body) - 1: "damaged"}
            for where, kind in picks.items():
                changed = bytearray(body)
                changed[where] ^= 0xFF
                parts = parts_of(data)
                parts[i] = (ctype, bytes(changed))
                c.add(f"body-{label}-{i}-{ctype.decode()}-{where}", assemble(parts), kind, f"chunk body {ctype.decode()}")

    # IHDR fields, CRC fixed (both writers claim PixelRTS, so geometry problems are damage).
    ihdr_cases = [
        ("wide", {"w": 64}, "container"), ("tall", {"h": 64}, "container"), ("bigger", {"w": 64, "h": 64}, "container"),
        ("smaller", {"w": 4, "h": 4}, "container"), ("zero-w", {"w": 0}, "container"), ("zero-h", {"h": 0}, "container"),
        ("huge", {"w": 100_000, "h": 100_000}, "unknown"), ("max", {"w": 0x7FFFFFFF, "h": 0x7FFFFFFF}, "unknown"),
        ("overflow", {"w": 0x80000000}, "container"), ("odd-side", {"w": 6, "h": 6}, "container"),
        ("depth-1", {"depth": 1}, "container"), ("depth-2", {"depth": 2}, "container"), ("depth-4", {"depth": 4}, "container"),
        ("depth-3", {"depth": 3}, "container"), ("depth-16", {"depth": 16}, "container"), ("depth-255", {"depth": 255}, "container"),
        ("grey", {"colour": 0}, "container"), ("rgb", {"colour": 2}, "container"), ("palette", {"colour": 3}, "container"),
        ("grey-alpha", {"colour": 4}, "container"), ("colour-5", {"colour": 5}, "container"), ("colour-7", {"colour": 7}, "container"),
        ("interlace", {"interlace": 1}, "container"), ("interlace-2", {"interlace": 2}, "container"),
        ("compression-1", {"comp": 1}, "container"), ("filter-1", {"filt": 1}, "container"),
        ("16bit-over-limit", {"w": 1024, "h": 1024, "depth": 16}, "unknown"),
    ]
    for label, data in sources.items():
        for name, fields, kind in ihdr_cases:
            c.add(f"ihdr-{label}-{name}", with_ihdr(data, **fields), kind, "IHDR")

    # zlib bombs and surplus pixel data.
    meta_chunk = (b"tEXt", b"PixelRTS\0PixelRTS" + json.dumps(meta8, separators=(",", ":")).encode())
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in ~64 KB
    c.add("idat-bomb-small-image", raw_png(8, 8, b"", idat=bomb, extra=[meta_chunk]), "container", "zlib bomb")
    c.add("idat-bomb-1024", raw_png(1024, 1024, b"", idat=bomb, extra=[meta_chunk]), "container", "zlib bomb")
    c.add("idat-surplus-random", with_chunk(spec, b"IDAT", os.urandom(2 << 20), before=b"IEND"), "container", "surplus IDAT")
    c.add("idat-surplus-stream", replace_bodies(spec, b"IDAT", lambda b: b + zlib.compress(b"\0" * 5000)), "container", "surplus IDAT")
    c.add("idat-surplus-huge-file", spec[:-12] + chunk(b"IDAT", bytes(24 << 20)) + spec[-12:], "container", "surplus IDAT")
    head, (_, idat_body), iend = parts_of(spec)[:-2], parts_of(spec)[-2], parts_of(spec)[-1]
    half = len(idat_body) // 2
    c.add("idat-split-by-text", assemble([*head, (b"IDAT", idat_body[:half]), (b"tEXt", b"Comment\0x"),
                                          (b"IDAT", idat_body[half:]), iend]), "container", "chunk rules")
    c.add("idat-not-zlib", replace_bodies(spec, b"IDAT", lambda b: b"not a zlib stream at all"), "container", "zlib/filters")
    c.add("idat-empty", replace_bodies(spec, b"IDAT", lambda b: b""), "container", "zlib/filters")
    c.add("idat-missing", replace_bodies(spec, b"IDAT", lambda b: None), "container", "chunk rules")
    c.add("iend-missing", spec[:-12], "container", "chunk rules")
    c.add("ihdr-second", with_chunk(spec, b"IHDR", ihdr(8, 8)), "container", "chunk rules")
    c.add("critical-unknown", with_chunk(spec, b"CRIT", b"x"), "container", "chunk rules")
    c.add("chunk-length-huge", spec[:33] + struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + spec[41:], "container", "chunk rules")
    c.add("chunk-type-garbage", spec[:33] + spec[33:37] + b"t\0Xt" + spec[41:], "container", "chunk rules")

    # Text chunks: bombs, oversize, many chunks.
    ztxt_bomb = b"Comment\0\0" + zlib.compress(b"A" * (64 << 20), 9)
    c.add("ztxt-bomb", with_chunk(spec, b"zTXt", ztxt_bomb), "container", "text bomb")
    c.add("itxt-bomb", with_chunk(spec, b"iTXt", b"Comment\0\1\0\0\0" + zlib.compress(b"A" * (64 << 20), 9)), "container", "text bomb")
    c.add("ztxt-metadata-bomb", with_chunk(replace_bodies(spec, b"tEXt", lambda b: None), b"zTXt",
                                            b"PixelRTS\0\0" + zlib.compress(b"PixelRTS{" + b" " * (8 << 20) + b"}", 9)),
          "container", "text bomb")
    c.add("text-2mib", with_chunk(spec, b"tEXt", b"Comment\0" + b"B" * (2 << 20)), "container", "text size")
    many = spec
    for i in range(12):
        many = with_chunk(many, b"zTXt", b"Note%d\0\0" % i + zlib.compress(b"C" * (100 << 10)))
    c.add("text-many-chunks", many, "container", "text size")
    c.add("ztxt-not-zlib", with_chunk(spec, b"zTXt", b"Comment\0\0garbage"), "valid", "text bomb")
    c.add("text-bad-keyword", with_chunk(spec, b"tEXt", b"\0no keyword"), "valid", "ancillary chunks")

    # Crafted metadata in the tEXt chunk (no sidecar).
    good_meta = metadata_text(spec)
    compact = json.dumps(good_meta, separators=(",", ":"))

    def crafted(**changes: Any) -> str:
        meta = dict(good_meta)
        for key, value in changes.items():
            if value is _DROP:
                meta.pop(key, None)
            else:
                meta[key] = value
        return json.dumps(meta, separators=(",", ":"), allow_nan=True)

    raw_cases = {
        "offsets-start-infinity": compact[:-1] + ',"offsets":{"k":{"start":Infinity,"size":1}}}',
        "offsets-start-nan": compact[:-1] + ',"offsets":{"k":{"start":NaN,"size":1}}}',
        "size-minus-infinity": compact.replace('"data_size":200', '"data_size":-Infinity'),
        "data-size-5000-digits": compact.replace('"data_size":200', '"data_size":' + "9" * 5000),
        "unknown-key-5000-digits": compact[:-1] + ',"extra":' + "1" * 5000 + "}",
        "float-1e999": compact[:-1] + ',"ratio":1e999}',
        "deep-nesting-50": compact[:-1] + ',"x":' + "[" * 50 + "]" * 50 + "}",
        "deep-nesting-100000": compact[:-1] + ',"x":' + "[" * 100_000 + "]" * 100_000 + "}",
        "not-an-object": "[1,2,3]",
        "a-string": '"PixelRTS"',
        "truncated-json": compact[:-5],
        "duplicate-keys": compact[:-1] + ',"data_hash":5}',
        "latin1-garbage": compact[:-1] + ',"name":"\xff\xfe"}',
    }
    for name, text in raw_cases.items():
        # Readers find the metadata by the prefix 'PixelRTS{': a JSON array or string is no metadata at all.
        kind = {"latin1-garbage": "valid", "not-an-object": "plain", "a-string": "plain"}.get(name, "container")
        c.add(f"meta-{name}", with_metadata(spec, text), kind, "crafted metadata")
    typed = {
        "zstd-original-size-abc": {"compression": {"type": "zstd", "original_size": "abc"}},
        "data-hash-int": {"data_hash": 12345},
        "data-hash-missing": {"data_hash": _DROP},
        "data-hash-null": {"data_hash": None},
        "data-hash-short": {"data_hash": "abc"},
        "data-hash-list": {"data_hash": ["a"]},
        "data-size-string": {"data_size": "200"},
        "data-size-negative": {"data_size": -1},
        "data-size-bool": {"data_size": True},
        "data-size-float": {"data_size": 1.5},
        "data-size-over-capacity": {"data_size": 257},
        "encoded-size-over-capacity": {"encoded_size": 10_000},
        "grid-size-string": {"grid_size": "8"},
        "format-int": {"format": 2},
        "encoding-string": {"encoding": "RGBA"},
        "encoding-type-int": {"encoding": {"type": 5}},
        "offsets-list": {"offsets": [1, 2]},
        "offsets-entry-int": {"offsets": {"k": 5}},
        "offsets-size-string": {"offsets": {"k": {"start": 0, "size": "9"}}},
        "offsets-sha-int": {"offsets": {"k": {"sha256": 1}}},
        "hashes-list": {"hashes": ["x"]},
        "hashes-value-int": {"hashes": {"k": 1}},
        "compression-list": {"compression": ["zlib"]},
        "compression-string": {"compression": "zlib"},
        "compression-type-int": {"compression": {"type": 1}},
        "compression-level-string": {"compression": {"type": "zlib", "level": "9"}},
        "original-b64-int": {"original_data_b64": 5},
        "encoding-mode-list": {"encoding_mode": []},
    }
    for name, changes in typed.items():
        c.add(f"meta-{name}", with_metadata(spec, crafted(**changes)), "container", "crafted metadata")
    c.add("meta-huge-2mib", with_metadata(spec, crafted(description="D" * (2 << 20))), "container", "crafted metadata")
    payload_cases = {
        "hashes-data-mismatch": {"hashes": {"data": "0" * 64}},
        "data-hash-other": {"data_hash": "f" * 64},
        "data-size-smaller": {"data_size": 100},
        "compression-zlib-on-raw": {"compression": {"type": "zlib"}},
        "compression-lzma": {"compression": {"type": "lzma"}},
        "compression-zstd-on-raw": {"compression": {"type": "zstd"}},
        "original-b64-garbage": {"original_data_b64": "!!!not base64"},
        "original-b64-other": {"original_data_b64": base64.b64encode(b"other").decode()},
        "segment-outside": {"offsets": {"k": {"start": 150, "size": 100}}},
        "segment-hash-wrong": {"offsets": {"k": {"start": 0, "size": 10, "sha256": "0" * 64}}},
        "grid-size-differs": {"grid_size": 16},
    }
    for name, changes in payload_cases.items():
        c.add(f"meta-{name}", with_metadata(spec, crafted(**changes)), "payload", "metadata mismatch")
    c.add("meta-control-characters", with_metadata(spec, crafted(name="\x1b[2J\x1b[31mEVIL", description="line\r\nvalid: yes\x07")),
          "valid", "control characters")
    c.add("meta-name-with-markdown", with_metadata(spec, crafted(name="![d](http://127.0.0.1:1/beacon.png)")), "valid", "control characters")

    # Conflicting and hostile sidecars next to our valid image.
    def with_sidecar(name: str, content: bytes | None, kind: str, *, short: bool = False, maker: Callable[[Path], None] | None = None,
                     **override: Any) -> None:
        image = c.add(f"sidecar-{name}", ours, kind, "sidecar", **override)
        side = image.with_name(image.name[:-4] + ".meta.json") if short else image.with_name(image.name + ".meta.json")
        if maker is not None:
            maker(side)
        elif content is not None:
            side.write_bytes(content)

    side_meta = json.loads(ours_sidecar)
    with_sidecar("hash-differs", json.dumps({**side_meta, "data_hash": "e" * 64}).encode(), "payload")
    with_sidecar("size-differs", json.dumps({**side_meta, "data_size": 10}).encode(), "payload")
    with_sidecar("not-json", b"{broken", "container")
    with_sidecar("not-utf8", b"\xff\xfe{}", "container")
    with_sidecar("infinity", ours_sidecar.replace('"data_size": 3000', '"data_size": Infinity').encode(), "container")
    with_sidecar("huge", b" " * (2 << 20) + ours_sidecar.encode(), "container")
    with_sidecar("short-name-bad", json.dumps({**side_meta, "data_hash": 1}).encode(), "container", short=True)
    with_sidecar("short-name-good", ours_sidecar.encode(), "valid", short=True)
    with_sidecar("fifo", None, "unknown", maker=lambda p: os.mkfifo(p))
    with_sidecar("dev-zero", None, "unknown", maker=lambda p: p.symlink_to("/dev/zero"))
    with_sidecar("dev-null", None, "unknown", maker=lambda p: p.symlink_to("/dev/null"))
    with_sidecar("directory", None, "unknown", maker=lambda p: p.mkdir())
    with_sidecar("symlink-to-good", None, "valid", maker=lambda p: p.symlink_to(src / "ours.rts.png.meta.json"))
    with_sidecar("symlink-to-image", None, "container", maker=lambda p: p.symlink_to(src / "ours.rts.png"))
    with_sidecar("dangling-symlink", None, "valid", maker=lambda p: p.symlink_to(root / "nowhere.json"))  # absent
    with_sidecar("socket", None, "unknown", maker=_make_socket)

    # The image itself is not a regular file, or is reached oddly.
    c.add("image-fifo", None, "unknown", "special file")
    os.mkfifo(c.cases[-1].path)
    c.add("image-dev-zero", None, "unknown", "special file")
    os.symlink("/dev/zero", c.cases[-1].path)
    c.add("image-dev-null", None, "unknown", "special file")
    os.symlink("/dev/null", c.cases[-1].path)
    c.add("image-dev-urandom", None, "unknown", "special file")
    os.symlink("/dev/urandom", c.cases[-1].path)
    c.add("image-socket", None, "unknown", "special file")
    _make_socket(Path(c.cases[-1].path))
    c.add("image-directory", None, "unknown", "special file")
    os.mkdir(c.cases[-1].path)
    c.add("image-dangling-symlink", None, "unknown", "special file")
    os.symlink(root / "nowhere.png", c.cases[-1].path)
    c.add("image-missing", None, "unknown", "special file")
    c.add("image-symlink-to-valid", None, "valid", "symlink", register=(0, 3))
    os.symlink(src / "spec.rts.png", c.cases[-1].path)

    # Odd names for valid images: the longest name (its sidecar names cannot exist), control characters.
    long_name = root / ("L" * (251 - len(".rts.png")) + ".rts.png")
    long_name.write_bytes(spec)
    c.cases.append(Case(long_name.name, str(long_name), "valid", "odd names"))
    for label, name in (("ansi", "evil\x1b[2J\x1b[1;32mOK.rts.png"), ("crlf", "two\r\nlines.rts.png"),
                        ("unicode", "ünïcödé ✓ name.rts.png"), ("dash", "-dash.rts.png")):
        odd = root / name
        odd.write_bytes(spec)
        c.cases.append(Case(f"odd-{label}", str(odd), "valid", "odd names"))

    # Not PNGs at all.
    c.add("empty", b"", "unknown", "not a PNG")
    c.add("text", b"hello, I am not an image\n", "unknown", "not a PNG")
    c.add("jpeg-magic", b"\xff\xd8\xff\xe0" + bytes(100), "unknown", "not a PNG")
    c.add("signature-only", SIG, "container", "truncation")
    c.add("signature-garbage", SIG + os.urandom(200), "container", "chunk rules")
    c.add("random-bytes", os.urandom(4096), "unknown", "not a PNG")
    c.add("zeros-1mib", bytes(1 << 20), "unknown", "not a PNG")
    return c.cases


_DROP = object()


def _make_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def argv_for(command: str, case: Case, out_dir: Path, index: int) -> list[str]:
    if command == "decode --verify":
        return ["decode", case.path, "--verify", "-o", str(out_dir / f"decoded-{index}.bin")]
    words = command.split()
    return [words[0], case.path, *words[1:]]


# --------------------------------------------------------------------------- the child-process runner

class _Overrun(BaseException):
    """Raised by the per-run alarm; a BaseException so the CLI's own handlers cannot swallow it."""


def _run_one(argv: list[str], capture: tuple[int, int]) -> dict[str, Any]:
    import resource
    import signal
    import time

    from healing.cli import main

    out_fd, err_fd = capture
    for fd in capture:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, RUN_LIMIT_S)
    try:
        code: int | str = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 64
    except _Overrun:
        code = "overrun"
    except MemoryError:
        code = "MemoryError"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.perf_counter() - started
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def read(fd: int) -> str:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1 << 20).decode("utf-8", "replace")

    return {"code": code, "seconds": round(elapsed, 4), "stdout": read(out_fd), "stderr": read(err_fd),
            "maxrss_kib": rss_after, "rss_growth_kib": rss_after - rss_before}


def run_cases(cases_file: Path, results_file: Path) -> None:
    """Run every (case, command) in this process under the address-space limit; one JSON line each."""
    import resource
    import signal
    import tempfile

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    def overrun(_signum: int, _frame: Any) -> None:
        raise _Overrun

    signal.signal(signal.SIGALRM, overrun)
    spec = json.loads(cases_file.read_text())
    out_dir = Path(spec["out_dir"])
    files = [tempfile.TemporaryFile(dir=out_dir) for _ in range(2)]  # stdout and stderr of each run
    capture = (files[0].fileno(), files[1].fileno())
    with results_file.open("a", encoding="utf-8") as results:
        for item in spec["runs"]:
            result = _run_one(item["argv"], capture)
            result.update(case=item["case"], command=item["command"])
            results.write(json.dumps(result) + "\n")
            results.flush()


def plan(cases: list[Case], out_dir: Path, commands: tuple[str, ...] = COMMANDS) -> list[dict[str, Any]]:
    """The runs for a list of cases: every command on every case."""
    return [{"case": i, "command": command, "argv": argv_for(command, case, out_dir, i)}
            for i, case in enumerate(cases) for command in commands]


def cases_json(cases: list[Case]) -> list[dict[str, Any]]:
    return [asdict(case) for case in cases]


if __name__ == "__main__":
    run_cases(Path(sys.argv[1]), Path(sys.argv[2]))
