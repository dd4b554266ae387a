"""The one validation of PixelRTS metadata that every reader goes through (codec, checker, worker).

Metadata that is present but not what a reader can rely on — not strict JSON (NaN, Infinity, integers
of thousands of digits), nested deeper than any writer nests, or a field the reader uses with the wrong
type or range — is a CorruptedError: a structural, critical finding (exit 2), never an exception
further down. Unknown keys are allowed (their readers ignore them too); known keys are checked.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from healing.errors import CorruptedError

MAX_DEPTH = 32  # writers nest 3 levels; deeper is hostile (and would recurse in comparisons and dumps)
MAX_INT_DIGITS = 20  # every size, offset and level fits in 64 bits
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def parse_metadata(text: str, where: str) -> dict[str, Any]:
    """Strict JSON → a checked metadata dict, or CorruptedError naming ``where`` and the first problem."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except _NotStrictJSON as exc:
        raise CorruptedError(f"PixelRTS metadata in {where} is not valid JSON ({exc})") from None
    except (json.JSONDecodeError, RecursionError):
        raise CorruptedError(f"PixelRTS metadata in {where} is not valid JSON") from None
    if not isinstance(value, dict):
        raise CorruptedError(f"PixelRTS metadata in {where} is not a JSON object")
    problem = metadata_problem(value)
    if problem:
        raise CorruptedError(f"PixelRTS metadata in {where} is invalid: {problem}")
    return value


class _NotStrictJSON(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotStrictJSON(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _NotStrictJSON(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStrictJSON(f"{text[:24]} is out of range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def metadata_problem(meta: dict[str, Any]) -> str | None:
    """The first problem of a metadata dict as a phrase, or None when a reader can rely on it."""
    if _depth(meta) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if not _is_hex64(meta.get("data_hash")):
        return ("data_hash is missing" if "data_hash" not in meta
                else f"data_hash must be a sha256 hex string, got {_short(meta['data_hash'])}")
    for key in ("data_size", "encoded_size", "grid_size", "format_version"):
        if meta.get(key) is not None and not _is_count(meta[key]):
            return f"{key} must be a non-negative integer, got {_short(meta[key])}"
    for key in ("format", "encoding_mode", "original_data_b64"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"{key} must be a string, got {_short(meta[key])}"
    encoding = meta.get("encoding")
    if encoding is not None:
        if not isinstance(encoding, dict):
            return f"encoding must be an object, got {_short(encoding)}"
        if encoding.get("type") is not None and not isinstance(encoding["type"], str):
            return f"encoding.type must be a string, got {_short(encoding['type'])}"
    hashes = meta.get("hashes")
    if hashes is not None:
        if not isinstance(hashes, dict):
            return f"hashes must be an object, got {_short(hashes)}"
        for name, value in hashes.items():
            if not isinstance(value, str):
                return f"hashes.{name} must be a string, got {_short(value)}"
    offsets = meta.get("offsets")
    if offsets is not None:
        if not isinstance(offsets, dict):
            return f"offsets must be an object, got {_short(offsets)}"
        for name, seg in offsets.items():
            if not isinstance(seg, dict):
                return f"offsets.{name} must be an object, got {_short(seg)}"
            for key in ("start", "size"):
                if key in seg and not _is_count(seg[key]):
                    return f"offsets.{name}.{key} must be a non-negative integer, got {_short(seg[key])}"
            if "sha256" in seg and not isinstance(seg["sha256"], str):
                return f"offsets.{name}.sha256 must be a string, got {_short(seg['sha256'])}"
    return _compression_problem(meta.get("compression"))


def _compression_problem(comp: Any) -> str | None:
    if comp is None or comp == {}:
        return None
    if not isinstance(comp, dict):
        return f"compression must be an object, got {_short(comp)}"
    if not isinstance(comp.get("type", "none"), str):
        return f"compression.type must be a string, got {_short(comp['type'])}"
    for key in ("level", "original_size", "compressed_size"):
        if comp.get(key) is not None and not _is_count(comp[key]):
            return f"compression.{key} must be a non-negative integer, got {_short(comp[key])}"
    ratio = comp.get("ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
        return f"compression.ratio must be a number, got {_short(ratio)}"
    return None
