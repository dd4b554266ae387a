"""Analysis engine and health checker for PixelRTS images and plain PNGs.

Pure functions (arrays in, results out): entropy maps (``block_entropy``, ``entropy_map``), edges
(``sobel_edges``, ``canny_edges``), Fourier (``analyze_fourier``), clusters (``detect_clusters``,
``dbscan``), anomaly scoring (``assess_stream``: zero/noise runs of a curve stream, healing.analysis.ranges;
``assess``: entropy outliers of square tiles), overlays (``entropy_heatmap``, ``edge_overlay``,
``findings_overlay``). The checker, ``VLMHealthChecker().check_health(path, ...)``, applies the
decision rules of DESIGN.md §5 and returns a ``HealthCheckResult``; its status vocabulary
(``HealthStatus``, ``finding``, the categories and severities) lives in ``healing.analysis.status``.

Names are loaded on first use (PEP 562): the CLI imports ``healing.analysis.commands`` at start-up,
which runs this file, so nothing heavy is imported here.
"""

from __future__ import annotations

from healing._lazy import lazy_exports

_EXPORTS = {
    "BANDS": "entropy",
    "EntropyMap": "entropy",
    "block_entropy": "entropy",
    "block_histograms": "entropy",
    "entropy_band": "entropy",
    "entropy_map": "entropy",
    "tiled_entropy_map": "entropy",
    "EdgeResult": "edges",
    "canny_edges": "edges",
    "sobel_edges": "edges",
    "FourierResult": "fourier",
    "analyze_fourier": "fourier",
    "ClusterResult": "clusters",
    "dbscan": "clusters",
    "detect_clusters": "clusters",
    "AnomalyModel": "anomaly",
    "AnomalyReport": "anomaly",
    "Outlier": "anomaly",
    "anomaly_score": "anomaly",
    "assess": "anomaly",
    "assess_stream": "anomaly",
    "RangeModel": "ranges",
    "find_candidates": "ranges",
    "colormaps": "overlays",
    "edge_overlay": "overlays",
    "entropy_heatmap": "overlays",
    "findings_overlay": "overlays",
    "write_png": "overlays",
    "range_region": "geometry",
    "build_baseline": "baseline",
    "changed_ranges": "baseline",
    "load_baseline": "baseline",
    "LoadedImage": "loading",
    "load_image": "loading",
    "HealthCheckResult": "health",
    "HealthStatus": "status",
    "CATEGORIES": "status",
    "SEVERITIES": "status",
    "finding": "status",
    "iso_now": "status",
    "VLMHealthChecker": "health",
    "analyze_image": "engine",
    "PixelRTSVisionAnalyzer": "engine",
    "PatternDetector": "engine",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
