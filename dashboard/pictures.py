"""Maps and overlays as small RGB pictures for ``st.image`` (PNG), instead of Plotly heatmaps.

A 1024² Plotly heatmap is ~11 MB of JSON at every rerun and a 4096² image as a data URI ~6 MB; the
pictures here are at most ``MAX_SIDE`` pixels on their longer side, drawn once per file version and
cached by the page. Every picture is opaque: the alpha channel of a PixelRTS image is payload, not
transparency, so low-alpha payload must not fade into the page's background.

  opaque_rgb(pixels)                         H×W×{1,3,4} → H×W×3 (alpha dropped)
  base_picture(pixels, max_side)             the image area-reduced, opaque; (picture, scale)
  draw_findings(picture, scale, findings)    a copy with one numbered rectangle per finding region
  entropy_picture(entropy, max_side)         0..8 bits/byte through viridis, blocks kept crisp
  magnitude_picture(values, max_side)        any non-negative map scaled to its 99.5th percentile, grey
  png_bytes(picture)                         the PNG file of an RGB picture (st.image sends it as is)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAX_SIDE = 800
# RGB, as healing.analysis.overlays draws severities
SEVERITY_RGB = {"high": (229, 57, 53), "medium": (251, 140, 0), "low": (253, 216, 53)}


def opaque_rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey or RGB(A) uint8 pixels as opaque RGB: the alpha channel is dropped, grey is repeated."""
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2).astype(np.uint8, copy=False)
    return np.ascontiguousarray(array[:, :, :3]).astype(np.uint8, copy=False)


def _fit(height: int, width: int, max_side: int) -> tuple[int, int]:
    factor = max(1.0, max(height, width) / max_side)
    return max(1, round(width / factor)), max(1, round(height / factor))


def base_picture(pixels: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, float]:
    """The image reduced (area average) to ``max_side`` on its longer side, opaque RGB, and the scale
    (picture pixels per image pixel) that maps image coordinates onto it."""
    import cv2

    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return opaque_rgb(pixels), 1.0
    size = _fit(height, width, max_side)
    # cv2's INTER_AREA reduces in one pass over uint8 data, without a float copy of the whole image.
    small = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA)
    return opaque_rgb(small), size[0] / width


def draw_findings(picture: np.ndarray, scale: float, findings: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """A copy of ``picture`` with each finding's region ``[x, y, w, h]`` (image pixels) outlined in its
    severity's colour and numbered like the findings table (1-based, in order)."""
    import cv2

    out = picture.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    for number, item in enumerate(findings, start=1):
        region = item.get("region")
        if not region:
            continue
        x, y, w, h = (float(v) for v in region)
        x0, y0 = int(np.clip(x * scale, 0, width - 1)), int(np.clip(y * scale, 0, height - 1))
        x1 = int(np.clip((x + w) * scale, x0 + 1, width - 1))
        y1 = int(np.clip((y + h) * scale, y0 + 1, height - 1))
        color = SEVERITY_RGB.get(str(item.get("severity")), SEVERITY_RGB["medium"])
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness + 2)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 255), max(1, thickness - 1))  # readable on any colour
        label_y = y0 - 4 if y0 > 16 else min(height - 2, y1 + 14)
        cv2.putText(out, str(number), (x0 + 2, label_y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, str(number), (x0 + 2, label_y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return out


def entropy_picture(entropy: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """A block-entropy map (bits per byte, 0..8: the full colour range) as a viridis RGB picture with
    crisp block edges (nearest-neighbour scaling)."""
    from healing.analysis.overlays import entropy_heatmap

    rows, cols = np.asarray(entropy).shape
    factor = max(1, max_side // max(rows, cols)) if max(rows, cols) <= max_side else None
    size = (cols * factor, rows * factor) if factor else _fit(rows, cols, max_side)
    return entropy_heatmap(entropy, size)


def magnitude_picture(values: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """A non-negative map (edge magnitude …) as grey RGB, white = its 99.5th percentile or more."""
    import cv2

    grid = np.asarray(values, dtype=np.float32)
    top = float(np.percentile(grid, 99.5)) if grid.size else 0.0
    levels = np.zeros(grid.shape, np.uint8) if top <= 0 else np.clip(grid * (255.0 / top), 0, 255).astype(np.uint8)
    rows, cols = levels.shape
    if max(rows, cols) > max_side:
        levels = cv2.resize(levels, _fit(rows, cols, max_side), interpolation=cv2.INTER_AREA)
    return np.repeat(levels[:, :, None], 3, axis=2)


def png_bytes(picture: np.ndarray) -> bytes:
    """An RGB uint8 picture as PNG file bytes: encoded once and cached by the page, so that a rerun
    does not encode it again (``st.image`` passes bytes through unchanged)."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(picture[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()
