"""PixelRTS v2 metadata: grid-size rules, the metadata dict in the order the existing tools write it,
segment tables, and sidecar names (PIXELRTS_V2.md §2–§4)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from healing.errors import UsageError
from healing.pixelrts._hilbert import is_power_of_two

FORMAT = "PixelRTS-2.0"
TEXT_PREFIX = "PixelRTS"
MAPPING = "Hilbert space-filling curve"
MODES = {"standard": "RGBA-dense", "code": "RGBA-code"}


def grid_size_for(length: int, *, legacy: bool = False) -> int:
    """Smallest power-of-two side for ``length`` bytes by the current (or the older) writers' rule."""
    if length <= 0:
        return 1
    aligned = length if legacy else -(-length // 64) * 64
    pixels = -(-aligned // 4)
    side = math.isqrt(pixels)
    if side * side < pixels:
        side += 1
    n = 1
    while n < side:
        n *= 2
    return n


def check_grid_size(grid_size: int, length: int) -> int:
    """Validate an explicit grid size: a power of two whose capacity holds ``length`` bytes."""
    if not isinstance(grid_size, int) or grid_size < 1 or not is_power_of_two(grid_size):
        raise UsageError(f"--grid-size must be a power of two (1, 2, 4, … 8192), got {grid_size}")
    if 4 * grid_size * grid_size < length:
        need = grid_size_for(length, legacy=True)
        raise UsageError(
            f"--grid-size {grid_size} holds {4 * grid_size * grid_size} bytes but the data needs {length}; use {need} or more"
        )
    return grid_size


def build_metadata(
    *,
    grid_size: int,
    mode: str,
    data_hash: str,
    data_size: int,
    caller: dict[str, Any] | None,
    segments: dict[str, dict[str, Any]],
    compression: dict[str, Any] | None,
    encoded_size: int | None,
    original_b64: str | None,
) -> dict[str, Any]:
    """Assemble the metadata dict with keys in the order the Geometry OS writer uses."""
    encoding_type = MODES[mode]
    reserved = RESERVED_SEGMENT_NAMES.intersection(segments)
    if reserved:
        raise UsageError(f"segment name {sorted(reserved)[0]!r} is reserved (hashes.data is the whole-input hash)")
    hashes: dict[str, str] = {name: seg["sha256"] for name, seg in segments.items()}
    hashes["data"] = data_hash  # their signer and consistency checker look here
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": 2,
        "grid_size": grid_size,
        "encoding": {"type": encoding_type, "bytes_per_pixel": 4, "mapping": MAPPING},
        "offsets": segments,
        "hashes": hashes,
        "encoding_mode": encoding_type,
    }
    for key, value in (caller or {}).items():
        if key in meta or key in ("data_hash", "data_size", "compression", "encoded_size", "original_data_b64"):
            continue
        meta["content_version" if key == "version" else key] = value
    meta["data_hash"] = data_hash
    meta["data_size"] = data_size
    if compression is not None:
        meta["compression"] = compression
        meta["encoded_size"] = encoded_size
    if original_b64 is not None:
        meta["original_data_b64"] = original_b64
    return meta


def text_value(meta: dict[str, Any]) -> str:
    """The tEXt value: the literal 'PixelRTS' followed by compact ASCII JSON."""
    return TEXT_PREFIX + json.dumps(meta, separators=(",", ":"), ensure_ascii=True)


def sidecar_text(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2) + "\n"


def sidecar_candidates(image: Path) -> list[Path]:
    """Sidecar names readers try, in order: '<image>.meta.json', then '<image minus .png>.meta.json'."""
    names = [image.with_name(image.name + ".meta.json")]
    if image.name.lower().endswith(".png"):
        names.append(image.with_name(image.name[:-4] + ".meta.json"))
    return names



# Segments (PIXELRTS_V2.md §3): named byte ranges of the input, each with its sha256 in ``offsets`` and
# ``hashes``. ``hashes["data"]`` is the whole-input hash their signer reads, so no segment may take that name.
RESERVED_SEGMENT_NAMES = frozenset({"data"})


def parse_segment(text: str) -> tuple[str, int | None, int | None]:
    """``NAME`` (the whole input) or ``NAME:START:SIZE`` (decimal or 0x… byte counts) → (name, start, size)."""
    name, start, size = text, None, None
    if ":" in text:
        parts = text.rsplit(":", 2)
        if len(parts) != 3:
            raise UsageError(f"--segment {text!r}: expected NAME or NAME:START:SIZE")
        name = parts[0]
        try:
            start, size = int(parts[1], 0), int(parts[2], 0)
        except ValueError:
            raise UsageError(f"--segment {text!r}: START and SIZE must be byte counts, got {parts[1]!r} and {parts[2]!r}") from None
        if start < 0 or size < 0:
            raise UsageError(f"--segment {text!r}: START and SIZE must not be negative")
    if not name.strip():
        raise UsageError(f"--segment {text!r}: the segment needs a name")
    if name in RESERVED_SEGMENT_NAMES:
        raise UsageError(f"--segment {text!r}: {name!r} is reserved (hashes.data is the whole-input hash)")
    return name, start, size


def segment_ranges(specs: list[tuple[str, int | None, int | None]], length: int) -> dict[str, dict[str, int]]:
    """{name: {"start", "size"}} for parsed --segment values over an input of ``length`` bytes; a name
    without a range covers the whole input. Repeated names and ranges past the end are usage errors."""
    table: dict[str, dict[str, int]] = {}
    for name, start, size in specs:
        if name in table:
            raise UsageError(f"--segment {name!r} is given twice")
        start, size = (0, length) if start is None or size is None else (start, size)
        if start + size > length:
            raise UsageError(f"--segment {name}:{start}:{size} ends at byte {start + size}, past the {length}-byte input")
        table[name] = {"start": start, "size": size}
    return table
