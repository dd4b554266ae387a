"""Running the analysis methods on one image, and the guide's analyzer classes over them.

``analyze_image`` is what `selfheal analyze` prints: each method on the image reduced to at most
``max_size`` pixels on a side (edges, Fourier and clusters describe texture, which survives area
averaging; the entropy map is always computed on the full stream). Coordinates and frequencies are
reported in full-image units.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from healing.analysis.clusters import ClusterResult, detect_clusters
from healing.analysis.edges import EdgeResult, canny_edges, sobel_edges
from healing.analysis.entropy import DEFAULT_BLOCK_SIZE, EntropyMap, entropy_map, tiled_entropy_map
from healing.analysis.fourier import FourierResult, analyze_fourier
from healing.analysis.imaging import downscale
from healing.analysis.loading import LoadedImage, load_image

if TYPE_CHECKING:
    from healing.config import Settings

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
    """The guide's low-level detector over one image file (analysis on the reduced image).

    Every result reads both as an object and as a dict: ``result.edge_count`` and ``result["edge_count"]``.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_size: int = DEFAULT_ANALYSIS_SIZE,
                 settings: Settings | None = None) -> None:
        self._settings = settings
        self.loaded = load_image(path, max_pixels=self.settings.pixelrts.max_pixels,
                                 max_metadata_bytes=self.settings.pixelrts.max_metadata_bytes)
        self.image, self.scale = downscale(self.loaded.pixels, max_size)

    @property
    def settings(self) -> Settings:
        """The settings given, else loaded from the config file and environment on first use."""
        if self._settings is None:
            from healing.config import load_settings

            self._settings = load_settings()
        return self._settings

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

    # ------------------------------------------------------------------ vision models

    def prepare_for_vision_model(self, max_size: int = 512) -> tuple[np.ndarray, str]:
        """The picture a vision model is shown: ``(rgb, b64)`` — an RGB array at most ``max_size`` on its
        longer side (never enlarged; area-averaged) and the same picture as a base64 PNG."""
        from healing.vision.prompt import prepare_image

        if max_size < 1:
            raise ValueError(f"max_size must be at least 1 pixel, got {max_size}")
        prepared = prepare_image(self.loaded.pixels, max_size)
        import cv2

        bgr = cv2.imdecode(np.frombuffer(prepared.png, np.uint8), cv2.IMREAD_COLOR)
        return np.ascontiguousarray(bgr[:, :, ::-1]), prepared.base64

    def vision_context(self) -> Any:
        """What a vision model is given about this image: pixels, entropy overlay, metrics, outliers."""
        from healing.analysis.anomaly import AnomalyModel, assess, assess_stream
        from healing.analysis.overlays import entropy_heatmap
        from healing.vision import AnalysisContext

        emap = image_entropy(self.loaded, self.settings.health_check.block_size)
        stream = self.loaded.stream
        report = (assess_stream(stream, emap, AnomalyModel()) if stream is not None and emap.grid_size is not None
                  else assess(emap, AnomalyModel()))
        small = self.image
        hash_verified = self.loaded.report.hash_verified if self.loaded.report is not None else None
        metrics = {"mean_entropy": emap.stats["mean"], "entropy_std": emap.stats["std"],
                   "anomaly_score": round(report.score, 4), "outlier_blocks": report.outlier_blocks,
                   "grid_size": self.loaded.grid_size, "hash_verified": hash_verified,
                   "data_size": (self.loaded.metadata or {}).get("data_size")}
        return AnalysisContext(
            image_path=self.loaded.path, pixels=self.loaded.pixels, grid_size=self.loaded.grid_size,
            overlay=entropy_heatmap(emap.image, (small.shape[1], small.shape[0])), metadata=self.loaded.metadata,
            metrics=metrics, outliers=[{"region": list(o.region), "entropy": o.entropy, "zscore": o.zscore}
                                       for o in report.outliers],
        )

    def analyze_with_vision_model(self, model: str | None = None, endpoint: str | None = None, *,
                                  api_key: str | None = None, client: Any = None) -> str:
        """Ask a vision model about this image; returns its answer text (read it with ``parse_vision_findings``).

        ``model`` names a provider (default ``vision_model.provider`` / ``VLM_MODEL_PROVIDER``) and
        ``endpoint`` its base URL (default: the configured one, else the provider's). Raises
        :class:`healing.vision.VisionModelError` (one line) when no vision model is configured or it
        cannot answer.
        """
        from healing.vision.providers import VisionModelError
        from healing.vision.selection import PROVIDERS, make_provider

        name = (model or self.settings.vision_model.provider).strip().lower()
        spec = PROVIDERS.get(name)
        if spec is None:
            raise VisionModelError(f"unknown vision model {name!r} (choose from {', '.join(PROVIDERS)})")
        if spec.kind == "statistical":
            raise VisionModelError("no vision model configured (vision_model.provider is statistical): set "
                                   "VLM_MODEL_PROVIDER and VLM_MODEL_ENDPOINT, or pass model= and endpoint=")
        provider = make_provider(name, self.settings, endpoint=endpoint, api_key=api_key, client=client)
        return provider.ask(self.vision_context())

    def parse_vision_findings(self, text: str) -> dict[str, list[dict[str, Any]]]:
        """A model's answer as ``{category: [finding, ...]}`` for the five finding categories.

        Each finding is ``{"severity", "description", "region"}`` (region ``[x, y, w, h]`` clamped to
        this image, or None).
        JSON answers and bulleted lists are both read (healing.vision.parsing); an answer that says
        nothing readable gives five empty lists.
        """
        from healing.analysis.status import CATEGORIES
        from healing.vision.parsing import parse_answer

        grouped: dict[str, list[dict[str, Any]]] = {category: [] for category in CATEGORIES}
        height, width = self.loaded.pixels.shape[:2]
        parsed = parse_answer(text if isinstance(text, str) else str(text), (int(width), int(height)))
        for item in parsed.findings if parsed is not None else []:
            grouped.setdefault(item.category, []).append(
                {"severity": item.severity, "description": item.description,
                 "region": list(item.region) if item.region else None})
        return grouped
