"""DBSCAN clustering of pixel positions or colours on a bounded sample.

The clustering runs on at most ``max_samples`` points, chosen with a fixed seed, so its cost does
not grow with the image. DBSCAN is implemented here with NumPy (a chunked neighbour matrix and a
breadth-first walk over core points): on a few thousand points that is milliseconds, while importing
scikit-learn alone costs about two seconds of every `analyze` run on these machines.
Semantics are scikit-learn's: a core point has at least ``min_samples`` points (itself included)
within ``eps``; clusters are the connected core points plus their border points; the rest is noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from healing.analysis._results import ResultMapping

DEFAULT_MAX_SAMPLES = 4096
FEATURE_TYPES = ("position", "color")


def dbscan(points: np.ndarray, eps: float, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, core mask) of DBSCAN on ``points`` (k, d): labels 0..m-1, noise -1."""
    pts = np.asarray(points, dtype=np.float64)
    count = pts.shape[0]
    labels = np.full(count, -1, dtype=np.int64)
    if count == 0:
        return labels, np.zeros(0, dtype=bool)
    neighbours = np.zeros((count, count), dtype=bool)
    sq = (pts * pts).sum(axis=1)
    step = max(1, (1 << 22) // max(count, 1))
    for start in range(0, count, step):
        block = pts[start : start + step]
        d2 = sq[start : start + step, None] + sq[None, :] - 2.0 * block @ pts.T
        neighbours[start : start + step] = d2 <= eps * eps + 1e-9
    core = neighbours.sum(axis=1) >= min_samples
    cluster = 0
    for seed in np.flatnonzero(core):
        if labels[seed] != -1:
            continue
        labels[seed] = cluster
        frontier = [int(seed)]
        while frontier:
            point = frontier.pop()
            reach = np.flatnonzero(neighbours[point] & (labels == -1))
            labels[reach] = cluster
            frontier.extend(int(p) for p in reach if core[p])
        cluster += 1
    return labels, core


@dataclass
class ClusterResult(ResultMapping):
    """Clusters found in a sample. Regions are (x, y, w, h) in full-image pixels."""

    feature_type: str
    num_clusters: int
    noise_points: int
    sample_size: int
    eps: float
    min_samples: int
    regions_of_interest: list[dict[str, Any]] = field(default_factory=list)
    labels: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"feature_type": self.feature_type, "num_clusters": self.num_clusters,
                "noise_points": self.noise_points, "sample_size": self.sample_size, "eps": self.eps,
                "min_samples": self.min_samples, "regions_of_interest": self.regions_of_interest}


def _salient_positions(grey: np.ndarray) -> np.ndarray:
    """(y, x) of pixels that stand out from their surroundings: Sobel magnitude above mean + 2·std."""
    from healing.analysis.edges import sobel_edges

    mask = sobel_edges(grey, strongest=0).edges
    assert mask is not None
    return np.argwhere(mask)


def detect_clusters(pixels: np.ndarray, eps: float = 5.0, min_samples: int = 10, feature_type: str = "position", *,
                    max_samples: int = DEFAULT_MAX_SAMPLES, scale: float = 1.0, seed: int = 0) -> ClusterResult:
    """DBSCAN on a bounded sample of the image.

    ``position``: (x, y) of the salient (edge) pixels, ``eps`` in pixels of ``pixels``; clusters are
    places where structure concentrates. ``color``: the RGB(A) values of sampled pixels, ``eps`` in
    colour units; clusters are the image's dominant colours, located by their members' bounding box.
    Each cluster becomes a region of interest with a description and a confidence: the fraction of
    its members that are core points (how solidly dense it is).
    """
    from healing.analysis.imaging import to_grey

    if feature_type not in FEATURE_TYPES:
        raise ValueError(f"feature_type must be one of {', '.join(FEATURE_TYPES)}, got {feature_type!r}")
    if eps <= 0 or min_samples < 1:
        raise ValueError("clustering needs eps > 0 and min_samples ≥ 1")
    rng = np.random.default_rng(seed)
    array = np.asarray(pixels)
    if feature_type == "position":
        coords = _salient_positions(to_grey(array))
    else:
        height, width = array.shape[:2]
        total = height * width
        picks = rng.choice(total, size=min(max_samples, total), replace=False) if total > max_samples else np.arange(total)
        coords = np.column_stack(np.divmod(picks, width))
    if coords.shape[0] > max_samples:
        coords = coords[np.sort(rng.choice(coords.shape[0], size=max_samples, replace=False))]
    if feature_type == "position":
        features = coords[:, ::-1].astype(np.float64)  # (x, y)
    else:
        flat = array.reshape(array.shape[0], array.shape[1], -1)
        features = flat[coords[:, 0], coords[:, 1]].astype(np.float64)
    labels, core = dbscan(features, eps, min_samples)
    count = int(labels.max() + 1) if labels.size else 0
    regions = []
    for label in range(count):
        members = labels == label
        ys, xs = coords[members, 0], coords[members, 1]
        x0, y0 = int(xs.min() * scale), int(ys.min() * scale)
        w = max(1, int(np.ceil((xs.max() + 1) * scale)) - x0)
        h = max(1, int(np.ceil((ys.max() + 1) * scale)) - y0)
        size = int(members.sum())
        if feature_type == "position":
            description = f"{size} salient pixels concentrated in {w}x{h} at ({x0}, {y0})"
        else:
            colour = ", ".join(str(int(round(v))) for v in features[members].mean(axis=0))
            description = f"{size} sampled pixels of colour ≈ ({colour}) spread over {w}x{h} at ({x0}, {y0})"
        regions.append({"region": [x0, y0, w, h], "points": size, "description": description,
                        "confidence": round(float(core[members].mean()), 4)})
    regions.sort(key=lambda r: -r["points"])
    return ClusterResult(feature_type, count, int((labels == -1).sum()), int(features.shape[0]), float(eps),
                         int(min_samples), regions, labels)
