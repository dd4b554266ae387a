"""Baselines: what a later check compares against to name damaged blocks.

A baseline records, for the curve-ordered stream of a PixelRTS image (or the stream of a plain
square power-of-two PNG), the sha256 and Shannon entropy of every ``block_size``-byte block, the
file's sha256, the payload's ``data_hash`` and the metrics of the check that accompanied it. The
keys are those the image registry writes (healing.images.integrity.build_baseline), plus
``kind``, ``image_path``, ``created`` and ``metrics``, so either side reads the other's files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from healing.analysis.geometry import merge_ranges
from healing.errors import InputError

BASELINE_VERSION = 1
BASELINE_KIND = "selfheal-baseline"


def block_hashes(stream: np.ndarray, block_size: int) -> list[str]:
    """sha256 hex of each consecutive ``block_size``-byte block (the last may be shorter)."""
    view = memoryview(np.ascontiguousarray(stream)).cast("B")
    return [hashlib.sha256(view[i : i + block_size]).hexdigest() for i in range(0, len(view), block_size)]


def build_baseline(*, stream: np.ndarray, grid_size: int, block_size: int, file_sha256: str,
                   data_hash: str | None, block_entropy: np.ndarray, image_path: str, created: str,
                   metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The baseline document (JSON-ready) of one image's stream."""
    entropy = [round(float(e), 4) for e in block_entropy]
    return {
        "kind": BASELINE_KIND,
        "version": BASELINE_VERSION,
        "image_path": image_path,
        "created": created,
        "file_sha256": file_sha256,
        "data_hash": data_hash,
        "grid_size": grid_size,
        "stream_length": int(stream.size),
        "block_size": block_size,
        "block_sha256": block_hashes(stream, block_size),
        "block_entropy": entropy,
        "mean_entropy": round(float(np.mean(block_entropy)), 4) if len(entropy) else 0.0,
        "metrics": dict(metrics or {}),
    }


MAX_BASELINE_BYTES = 256 << 20  # ~100 bytes per 4 KiB block: room for the largest grid at small blocks


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and validate a baseline file; InputError (one line) when it is missing, not a regular file
    (FIFO, device), too large or malformed."""
    from healing.safeio import read_regular

    path = Path(path)
    if not os.path.exists(path):  # also a name that cannot exist (too long)
        raise InputError(f"{path}: baseline file not found")
    raw = read_regular(path, max_bytes=MAX_BASELINE_BYTES, what="a baseline file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: baseline is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: baseline is not valid JSON (line {exc.lineno})") from None
    except (ValueError, RecursionError):  # integers of thousands of digits, deep nesting
        raise InputError(f"{path}: baseline is not valid JSON") from None
    validate_baseline(data, str(path))
    return data


def validate_baseline(data: Any, where: str = "baseline") -> None:
    """Raise InputError naming the first missing or ill-typed key of a baseline document."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: a baseline is a JSON object")
    checks: list[tuple[str, type | tuple[type, ...]]] = [
        ("grid_size", int), ("block_size", int), ("stream_length", int), ("block_sha256", list)]
    for key, kind in checks:
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise InputError(f"{where}: baseline key {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    if data["block_size"] < 1 or data["grid_size"] < 1:
        raise InputError(f"{where}: baseline grid_size and block_size must be positive")
    expected = -(-data["stream_length"] // data["block_size"])
    if len(data["block_sha256"]) != expected:
        raise InputError(f"{where}: baseline lists {len(data['block_sha256'])} block hashes, expected {expected}")


def changed_ranges(stream: np.ndarray, baseline: dict[str, Any]) -> list[tuple[int, int]]:
    """Merged [start, end) byte ranges of the stream whose block hash differs from the baseline.

    The caller has checked that the stream has the baseline's length.
    """
    block = int(baseline["block_size"])
    current = block_hashes(stream, block)
    expected = baseline["block_sha256"]
    size = int(stream.size)
    ranges = [(i * block, min((i + 1) * block, size)) for i, (now, then) in enumerate(zip(current, expected, strict=True))
              if now != then]
    return merge_ranges(ranges)
