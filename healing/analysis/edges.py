"""Edge detection (Sobel and Canny) on an image array, with the guide's result fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from healing.analysis._results import ResultMapping
from healing.analysis.imaging import to_grey

DEFAULT_STRONGEST = 100


@dataclass
class EdgeResult(ResultMapping):
    """Edges of one image. ``strong_edges`` lists the strongest edge pixels (x, y, magnitude)."""

    method: str
    edge_count: int
    edge_density: float
    strong_edges: list[dict[str, float]]
    strong_edges_count: int
    threshold: float | None
    gradient: dict[str, float] = field(default_factory=dict)  # mean/std/max of the gradient magnitude
    magnitude: np.ndarray | None = field(default=None, repr=False)  # per pixel, for overlays
    edges: np.ndarray | None = field(default=None, repr=False)  # bool mask of edge pixels
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "edge_count": self.edge_count, "edge_density": round(self.edge_density, 6),
            "strong_edges_count": self.strong_edges_count, "strong_edges": self.strong_edges,
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "gradient": self.gradient, **self.params,
        }


def _gradients(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    g = grey.astype(np.float32)
    return cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)


def _strongest(magnitude: np.ndarray, mask: np.ndarray, limit: int, scale: float) -> list[dict[str, float]]:
    values = np.where(mask, magnitude, -1.0).ravel()
    count = int(mask.sum())
    if count == 0 or limit <= 0:
        return []
    k = min(limit, count)
    top = np.argpartition(values, -k)[-k:]
    top = top[np.argsort(-values[top], kind="stable")]
    width = magnitude.shape[1]
    return [{"x": round(float(i % width) * scale, 2), "y": round(float(i // width) * scale, 2),
             "magnitude": round(float(values[i]), 3)} for i in top]


def _gradient_stats(magnitude: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(magnitude.mean()), 4), "std": round(float(magnitude.std()), 4),
            "max": round(float(magnitude.max()), 4) if magnitude.size else 0.0}


def sobel_edges(pixels: np.ndarray, threshold: float | None = None, *, strongest: int = DEFAULT_STRONGEST,
                scale: float = 1.0) -> EdgeResult:
    """Sobel (3×3) gradient magnitude of the luminance; edges are pixels whose magnitude exceeds
    ``threshold`` (default: mean + 2·std of the magnitude, so a flat image has no edges).

    ``scale`` converts coordinates of a downscaled image back to the full image.
    """
    gx, gy = _gradients(to_grey(pixels))
    magnitude = np.sqrt(gx * gx + gy * gy)
    t = float(magnitude.mean() + 2 * magnitude.std()) if threshold is None else float(threshold)
    mask = magnitude > t
    count = int(mask.sum())
    strong = _strongest(magnitude, mask, strongest, scale)
    return EdgeResult("sobel", count, count / mask.size if mask.size else 0.0, strong, count, t,
                      _gradient_stats(magnitude), magnitude, mask)


def canny_edges(pixels: np.ndarray, low_threshold: float = 50, high_threshold: float = 150, *,
                strongest: int = DEFAULT_STRONGEST, scale: float = 1.0) -> EdgeResult:
    """OpenCV Canny edges of the luminance; strong edges are edge pixels whose L1 gradient
    (|gx| + |gy|, what Canny compares) reaches ``high_threshold``."""
    import cv2

    if low_threshold < 0 or high_threshold < low_threshold:
        raise ValueError("canny needs 0 ≤ low_threshold ≤ high_threshold")
    grey = to_grey(pixels)
    mask = cv2.Canny(grey, float(low_threshold), float(high_threshold)) > 0
    gx, gy = _gradients(grey)
    l1 = np.abs(gx) + np.abs(gy)
    strong_mask = mask & (l1 >= high_threshold)
    count = int(mask.sum())
    return EdgeResult("canny", count, count / mask.size if mask.size else 0.0,
                      _strongest(l1, strong_mask, strongest, scale), int(strong_mask.sum()), None,
                      _gradient_stats(np.sqrt(gx * gx + gy * gy)), l1, mask,
                      {"low_threshold": float(low_threshold), "high_threshold": float(high_threshold)})
