"""PixelRTS v2 metadata: grid-size rules, the metadata dict in the order the existing tools write it,
sidecar names, and the code-mode opcode weights (PIXELRTS_V2.md §2–§4, §6)."""

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
WASM_MAGIC = b"\x00asm"
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


# Code mode (PIXELRTS_V2.md §6): the red channel carries a weight for the WebAssembly opcode in b0.
def _opcode_weights() -> dict[int, int]:
    weights: dict[int, int] = {0x00: 255, 0x01: 0}  # unreachable, nop
    weights.update({op: 200 for op in (0x02, 0x03, 0x04)})  # block, loop, if
    weights.update({op: 150 for op in (0x0C, 0x0D, 0x0F, 0x10)})  # br, br_if, return, call
    weights.update({op: 100 for op in (0x05, 0x0B, 0x0E, 0x11, 0x12, 0x13, 0x1A, 0x1B, 0x1C)})  # other control
    weights.update({op: 50 for op in range(0x20, 0x41)})  # variable and memory access
    weights.update({op: 30 for op in range(0x41, 0x45)})  # i32/i64/f32/f64.const
    weights.update({op: 80 for op in range(0x45, 0xC5)})  # comparison, arithmetic, conversion
    return weights


OPCODE_WEIGHTS = _opcode_weights()
