"""Overlays for operators and the dashboard: entropy heatmap, edges, findings — RGB uint8 arrays.

Colormaps are OpenCV's (``cv2.applyColorMap``); no matplotlib. Overlays are drawn at most
``max_size`` pixels on a side (a 4096² heatmap says nothing a 1024² one does not, and costs 16×
the PNG encoding time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_COLORMAP = "viridis"
DEFAULT_OVERLAY_SIZE = 1024
GRAY_COLORMAP = -1  # not an OpenCV id: the identity map
SEVERITY_COLOURS = {"high": (255, 40, 40), "medium": (255, 165, 0), "low": (255, 235, 59)}  # RGB


def colormaps() -> dict[str, int]:
    """OpenCV colormaps by lower-case name (viridis, inferno, magma, plasma, jet, turbo, hot, …) and
    ``gray`` (GRAY_COLORMAP: the levels themselves)."""
    import cv2

    table = {name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")}
    table["gray"] = GRAY_COLORMAP
    return table


def apply_colormap(levels: np.ndarray, name: str) -> np.ndarray:
    """RGB image of uint8 ``levels`` through the named colormap."""
    import cv2

    cmap = colormap_id(name)
    if cmap == GRAY_COLORMAP:
        return cv2.cvtColor(levels, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(cv2.applyColorMap(levels, cmap), cv2.COLOR_BGR2RGB)


def colormap_id(name: str) -> int:
    """The OpenCV id of a colormap name; ValueError naming the choices when unknown."""
    table = colormaps()
    key = name.strip().lower()
    if key not in table:
        raise ValueError(f"unknown colormap {name!r} (choose from {', '.join(sorted(table))})")
    return table[key]


def _rgb(pixels: np.ndarray) -> np.ndarray:
    import cv2

    array = np.asarray(pixels)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_RGBA2RGB)
    return array.copy()


def _fit(shape: tuple[int, int], max_size: int) -> tuple[int, int]:
    height, width = shape
    factor = max(1.0, max(height, width) / max_size)
    return max(1, round(width / factor)), max(1, round(height / factor))


def entropy_heatmap(entropy_image: np.ndarray, size: tuple[int, int], colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """RGB heatmap of an image-space entropy map (0..8 bits per byte → the colormap's full range).

    ``size`` is (width, height) of the output; cells are scaled with nearest-neighbour so block
    boundaries stay crisp.
    """
    import cv2

    levels = np.clip(np.asarray(entropy_image, dtype=np.float32) * (255.0 / 8.0), 0, 255).astype(np.uint8)
    return apply_colormap(cv2.resize(levels, size, interpolation=cv2.INTER_NEAREST), colormap)


def blend(base: np.ndarray, layer: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``layer`` over ``base`` (both RGB of the same size) with opacity ``alpha``."""
    import cv2

    return cv2.addWeighted(layer, alpha, base, 1.0 - alpha, 0.0)


def edge_overlay(pixels: np.ndarray, edges: np.ndarray, *, max_size: int = DEFAULT_OVERLAY_SIZE) -> np.ndarray:
    """The image dimmed to grey with edge pixels (a bool mask, any size) drawn in red."""
    import cv2

    from healing.analysis.imaging import to_grey

    size = _fit(pixels.shape[:2], max_size)
    grey = cv2.resize(to_grey(pixels), size, interpolation=cv2.INTER_AREA) // 2
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    mask = cv2.resize(edges.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    out[mask] = (255, 40, 40)
    return out


def findings_overlay(pixels: np.ndarray, findings: Iterable[Mapping[str, Any]], *,
                     max_size: int = DEFAULT_OVERLAY_SIZE, thickness: int = 2) -> np.ndarray:
    """The image with the region of every finding outlined, coloured by severity."""
    import cv2

    height, width = pixels.shape[:2]
    size = _fit((height, width), max_size)
    out = np.ascontiguousarray(cv2.resize(_rgb(pixels), size, interpolation=cv2.INTER_AREA))
    fx, fy = size[0] / width, size[1] / height
    for finding in findings:
        region = finding.get("region")
        if not region:
            continue
        x, y, w, h = (float(v) for v in region)
        p0 = (int(x * fx), int(y * fy))
        p1 = (max(p0[0], int(np.ceil((x + w) * fx)) - 1), max(p0[1], int(np.ceil((y + h) * fy)) - 1))
        colour = SEVERITY_COLOURS.get(str(finding.get("severity")), SEVERITY_COLOURS["medium"])
        cv2.rectangle(out, p0, p1, colour, thickness)
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB(A) uint8 array as PNG atomically, never through a symlink; returns the path."""
    import cv2

    from healing.safeio import WriteError, describe_oserror, write_atomic

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create {path.parent}: {describe_oserror(exc)}") from None
    array = np.asarray(rgb)
    code = cv2.COLOR_RGBA2BGRA if array.ndim == 3 and array.shape[2] == 4 else cv2.COLOR_RGB2BGR
    bgr = cv2.cvtColor(array, code) if array.ndim == 3 else array
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise WriteError(f"cannot encode {path} as PNG")
    write_atomic(path, encoded.tobytes())
    return path


def spectrum_image(log_spectrum: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """RGB picture of a log-magnitude spectrum, normalised to its own range."""
    s = np.asarray(log_spectrum, dtype=np.float32)
    span = float(s.max() - s.min()) or 1.0
    return apply_colormap(((s - s.min()) * (255.0 / span)).astype(np.uint8), colormap)
