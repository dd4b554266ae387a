"""Running the analysis methods on one image, and the guide's analyzer classes over them.

``analyze_image`` is what `selfheal analyze` prints: each method on the image reduced to at most
``max_size`` pixels on a side (edges, Fourier and clusters describe texture, which survives area
averaging; the entropy map is always computed on the full stream). Coordinates and frequencies are
reported in full-image units.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from healing.analysis.clusters import ClusterResult, detect_clusters
from healing.analysis.edges import EdgeResult, canny_edges, sobel_edges
from healing.analysis.entropy import DEFAULT_BLOCK_SIZE, EntropyMap, entropy_map, tiled_entropy_map
from healing.analysis.fourier import FourierResult, analyze_fourier
from healing.analysis.imaging import downscale
from healing.analysis.loading import LoadedImage, load_image

METHODS = ("entropy", "edges", "fourier", "clusters")
DEFAULT_ANALYSIS_SIZE = 1024


def image_entropy(loaded: LoadedImage, block_size: int = DEFAULT_BLOCK_SIZE) -> EntropyMap:
    """The entropy map of a loaded image: curve blocks for grids, square tiles for other PNGs."""
    if loaded.stream is not None and loaded.grid_size is not None:
        length = loaded.image.stored_length if loaded.is_pixelrts else None
        return entropy_map(loaded.stream, loaded.grid_size, block_size, data_length=length,
                           exclude_padding=not loaded.is_pixelrts)
    return tiled_entropy_map(loaded.pixels, max(1, int(round((block_size / 4) ** 0.5))))


def analyze_image(loaded: LoadedImage, methods: tuple[str, ...] = METHODS, *, edge_method: str = "sobel",
                  block_size: int = DEFAULT_BLOCK_SIZE, max_size: int = DEFAULT_ANALYSIS_SIZE,
                  eps: float = 5.0, min_samples: int = 10) -> dict[str, Any]:
    """JSON-ready results of the chosen methods (see the module docstring)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown analysis method {unknown[0]!r} (choose from {', '.join(METHODS)})")
    height, width = loaded.pixels.shape[:2]
    out: dict[str, Any] = {"image_path": loaded.path, "width": width, "height": height, "grid_size": loaded.grid_size,
                           "pixelrts": loaded.is_pixelrts}
    small, scale = downscale(loaded.pixels, max_size) if set(methods) - {"entropy"} else (loaded.pixels, 1.0)
    out["analysis_size"] = [int(small.shape[1]), int(small.shape[0])]
    if "entropy" in methods:
        emap = image_entropy(loaded, block_size)
        out["entropy"] = {"block_size": emap.block_size, "blocks": int(emap.blocks.size), "cell": emap.cell,
                          "excluded_tail_blocks": emap.excluded_tail, **emap.summary()}
    if "edges" in methods:
        edges = canny_edges(small, scale=scale) if edge_method == "canny" else sobel_edges(small, scale=scale)
        out["edges"] = edges.to_dict()
    if "fourier" in methods:
        out["fourier"] = analyze_fourier(small, scale=scale).to_dict()
    if "clusters" in methods:
        out["clusters"] = {kind: detect_clusters(small, eps, min_samples, kind, scale=scale).to_dict()
                           for kind in ("position", "color")}
    return out


class PatternDetector:
    """The guide's low-level detector over one image file (analysis on the reduced image)."""

    def __init__(self, path: str | os.PathLike[str], *, max_size: int = DEFAULT_ANALYSIS_SIZE) -> None:
        self.loaded = load_image(path)
        self.image, self.scale = downscale(self.loaded.pixels, max_size)

    def detect_edges_sobel(self, threshold: float | None = None) -> EdgeResult:
        return sobel_edges(self.image, threshold, scale=self.scale)

    def detect_edges_canny(self, low_threshold: float = 50, high_threshold: float = 150) -> EdgeResult:
        return canny_edges(self.image, low_threshold, high_threshold, scale=self.scale)

    def analyze_fourier(self, max_frequencies: int = 10) -> FourierResult:
        return analyze_fourier(self.image, max_frequencies, scale=self.scale)

    def detect_clusters(self, eps: float = 5.0, min_samples: int = 10, feature_type: str = "position") -> ClusterResult:
        return detect_clusters(self.image, eps, min_samples, feature_type, scale=self.scale)


class PixelRTSVisionAnalyzer(PatternDetector):
    """The guide's visual analyzer: summary, entropy overlay and the detector's methods as dicts."""

    def get_visual_summary(self) -> dict[str, Any]:
        """Dimensions, channels, entropy statistics and metadata facts of the image."""
        pixels = self.loaded.pixels
        emap = image_entropy(self.loaded)
        meta = self.loaded.metadata or {}
        return {"width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "total_pixels": int(pixels.shape[0] * pixels.shape[1]),
                "channels": int(pixels.shape[2]) if pixels.ndim == 3 else 1, "grid_size": self.loaded.grid_size,
                "pixelrts": self.loaded.is_pixelrts, "data_size": meta.get("data_size"), "name": meta.get("name"),
                "entropy": emap.summary()}

    def entropy_overlay(self, colormap: str = "viridis", max_size: int = 1024) -> np.ndarray:
        """The entropy heatmap as an RGB array at most ``max_size`` on a side."""
        from healing.analysis.overlays import _fit, entropy_heatmap

        return entropy_heatmap(image_entropy(self.loaded).image, _fit(self.loaded.pixels.shape[:2], max_size), colormap)

    def generate_entropy_overlay(self, output_dir: str | os.PathLike[str], colormap: str = "viridis") -> Path:
        """Write ``<stem>_entropy.png`` into ``output_dir``; returns its path."""
        from healing.analysis.overlays import write_png

        stem = Path(self.loaded.path).name.removesuffix(".png").removesuffix(".rts")
        return write_png(Path(output_dir) / f"{stem}_entropy.png", self.entropy_overlay(colormap))

    def detect_edges(self, method: str = "sobel") -> dict[str, Any]:
        result = self.detect_edges_canny() if method == "canny" else self.detect_edges_sobel()
        return result.to_dict()
