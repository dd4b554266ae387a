"""Code-mode ("RGBA-code") pixels of a WebAssembly module, exactly as Geometry OS paints them
(PIXELRTS_V2.md §6).

Their opcode tables are not the WebAssembly specification's — clz/ctz/popcnt and most conversions
are missing, ``drop`` is listed as 0x0A instead of 0x1A — but the same module must give the same
picture in both tools, so these are their tables, mistakes included. Each 4-byte group b0..b3 becomes
R = weight(b0), G = b1, B = b2, A = 255 when b0 is in their tables, else 0; b3 is dropped.
"""

from __future__ import annotations

import numpy as np

WASM_MAGIC = b"\x00asm"


def _spans(*spans: tuple[int, int]) -> list[int]:
    """Opcodes of inclusive (first, last) spans."""
    return [op for first, last in spans for op in range(first, last + 1)]


def _their_tables() -> tuple[dict[int, int], frozenset[int]]:
    weight: dict[int, int] = {0x00: 255, 0x01: 0}  # unreachable, nop
    weight.update(dict.fromkeys((0x02, 0x03, 0x04), 200))  # block, loop, if
    weight.update(dict.fromkeys((0x0C, 0x0D, 0x0F, 0x10), 150))  # br, br_if, return, call
    weight.update(dict.fromkeys((0x05, 0x0B, 0x0E, 0x11), 100))  # else, end, br_table, call_indirect
    weight.update(dict.fromkeys(_spans((0x45, 0x66), (0x6A, 0x78), (0x7C, 0x8A), (0x92, 0x97), (0xA0, 0xA5)), 80))
    weight.update(dict.fromkeys(_spans((0x20, 0x24), (0x28, 0x40)), 50))  # variables, loads/stores, memory
    weight.update(dict.fromkeys(_spans((0x41, 0x44)), 30))  # i32/i64/f32/f64.const
    parametric = {0x0A: 0, 0x1B: 0, 0x1C: 0}  # their "drop" (0x0A), select, select t: known, weight 0
    known = frozenset(weight) | frozenset(parametric)
    return weight, known


OPCODE_WEIGHTS, KNOWN_OPCODES = _their_tables()


def _luts() -> tuple[np.ndarray, np.ndarray]:
    red = np.zeros(256, dtype=np.uint8)
    alpha = np.zeros(256, dtype=np.uint8)
    for op, weight in OPCODE_WEIGHTS.items():
        red[op] = weight
    alpha[list(KNOWN_OPCODES)] = 255
    return red, alpha


_RED, _ALPHA = _luts()


def code_pixels(data: bytes) -> np.ndarray:
    """The curve-ordered RGBA bytes of ``data`` painted in code mode: 4 bytes per started group."""
    groups = -(-len(data) // 4)
    quads = np.zeros((groups, 4), dtype=np.uint8)
    quads.reshape(-1)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    out = np.empty_like(quads)
    out[:, 0] = _RED[quads[:, 0]]
    out[:, 1] = quads[:, 1]
    out[:, 2] = quads[:, 2]
    out[:, 3] = _ALPHA[quads[:, 0]]
    return out.reshape(-1)
