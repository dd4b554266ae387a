"""Anomaly score (0..1) and likely places of damage: what statistics can say when no hash can decide.

For curve-ordered streams (PixelRTS grids, square plain PNGs) ``assess_stream`` scores the zero- and
noise-filled runs that healing.analysis.ranges finds against the file's own statistics and the priors
calibrated on real files (docs/statistics.md). For other plain PNGs (no curve, no byte stream: photos,
drawings) ``assess`` below scores entropy outliers of square tiles. Each block's entropy is
compared with the image's own typical block by a robust z-score: ``(e - median) / scale`` with
``scale = max(1.4826·MAD, min_scale)``; the floor keeps uniform data (all blocks ≈ 8.0 or all 0.0)
from turning tiny wobbles into huge z-scores. A block with |z| ≥ ``z_min`` is an outlier; its
weight rises linearly from 0 at ``z_min`` to ``block_weight`` at ``z_full``, and the score is the
noisy-OR of the weights: ``1 - Π(1 - w)``. With the defaults, three strongly deviating blocks
(12 KiB at the default block size) reach the warning threshold 0.7, six reach critical 0.9.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from healing.analysis.entropy import EntropyMap
from healing.analysis.geometry import Region, blocks_to_ranges, range_region
from healing.analysis.ranges import RangeModel, find_candidates, range_score


@dataclass(frozen=True)
class AnomalyModel:
    """Parameters of the statistical anomaly score (defaults documented in the module docstring)."""

    z_min: float = 3.0  # |z| where a block starts to count as an outlier
    z_full: float = 6.0  # |z| where it counts fully
    block_weight: float = 0.35  # weight of one fully deviating block in the noisy-OR
    min_scale: float = 0.25  # bits per byte: floor of the robust spread
    ranges: RangeModel = RangeModel()  # the zero/noise run detector of curve streams


@dataclass(frozen=True)
class Outlier:
    """A run of adjacent outlier blocks: byte range (curve order), pixel region, entropy, z-score."""

    byte_range: tuple[int, int] | None
    region: Region
    entropy: float  # mean entropy of the run's blocks
    zscore: float  # the run's z-score of largest magnitude
    blocks: int
    kind: str = "entropy"  # entropy (tile outlier), zeros or noise (healing.analysis.ranges)
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"byte_range": list(self.byte_range) if self.byte_range else None, "region": list(self.region),
                "entropy": round(self.entropy, 4), "zscore": round(self.zscore, 3), "blocks": self.blocks,
                "kind": self.kind}


@dataclass
class AnomalyReport:
    score: float
    zscores: np.ndarray  # per considered block
    outliers: list[Outlier]
    outlier_blocks: int
    median: float
    scale: float
    # Candidates found but not drawn as likely places: their kind's calibrated localisation falls
    # short of RangeModel.min_hint_overlap (healing.analysis.ranges).
    withheld: list[Outlier] = field(default_factory=list)


def robust_zscores(values: np.ndarray, min_scale: float) -> tuple[np.ndarray, float, float]:
    """(z, median, scale) with the MAD-based spread floored at ``min_scale``."""
    if values.size == 0:
        return np.zeros(0), 0.0, min_scale
    median = float(np.median(values))
    scale = max(1.4826 * float(np.median(np.abs(values - median))), min_scale)
    return (values - median) / scale, median, scale


def anomaly_score(zscores: np.ndarray, model: AnomalyModel = AnomalyModel()) -> float:
    """Noisy-OR of the outlier weights of ``zscores`` (see the module docstring), in [0, 1]."""
    z = np.abs(np.asarray(zscores, dtype=np.float64))
    weights = model.block_weight * np.clip((z - model.z_min) / (model.z_full - model.z_min), 0.0, 1.0)
    weights = weights[weights > 0]
    if weights.size == 0:
        return 0.0
    # log-sum keeps the product exact enough for thousands of blocks
    return float(min(1.0, max(0.0, -np.expm1(np.log1p(-weights).sum()))))


def assess(emap: EntropyMap, model: AnomalyModel = AnomalyModel(), *, max_outliers: int = 64) -> AnomalyReport:
    """Score the blocks of an entropy map and list outlier runs, strongest first."""
    values = emap.considered
    z, median, scale = robust_zscores(values, model.min_scale)
    score = anomaly_score(z, model)
    flagged = np.flatnonzero(np.abs(z) >= model.z_min)
    outliers: list[Outlier] = []
    if flagged.size:
        if emap.grid_size is not None:
            stream_len = 4 * emap.grid_size * emap.grid_size
            for start, end in blocks_to_ranges(flagged, emap.block_size, stream_len):
                first, last = start // emap.block_size, -(-end // emap.block_size)
                run_z = z[first:last]
                strongest = float(run_z[np.argmax(np.abs(run_z))])
                outliers.append(Outlier((start, end), range_region((start, end), emap.grid_size),
                                        float(values[first:last].mean()), strongest, last - first))
        else:
            tile = emap.tile or emap.cell
            cols = emap.image.shape[1]
            for i in flagged:
                r, c = divmod(int(i), cols)
                outliers.append(Outlier(None, (c * tile, r * tile, tile, tile), float(values[i]), float(z[i]), 1))
    outliers.sort(key=lambda o: -abs(o.zscore))
    return AnomalyReport(score=score, zscores=z, outliers=outliers[:max_outliers], outlier_blocks=int(flagged.size),
                         median=median, scale=scale)


def assess_stream(stream: np.ndarray, emap: EntropyMap, model: AnomalyModel = AnomalyModel(), *,
                  max_outliers: int = 64) -> AnomalyReport:
    """Score a curve stream by its zero and noise runs (healing.analysis.ranges); outliers are the runs.

    ``zscores`` are the blocks' robust entropy z-scores (descriptive); the score and the status come
    from the runs alone, so naturally varied files (programs, archives) are not judged by their spread.
    """
    assert emap.grid_size is not None
    values = emap.considered
    z, median, scale = robust_zscores(values, model.min_scale)
    candidates = find_candidates(stream, emap, model.ranges)
    block, n = emap.block_size, emap.grid_size
    drawn: list[Outlier] = []
    withheld: list[Outlier] = []
    for c in candidates:
        first, last = c.start // block, max(c.start // block + 1, -(-c.end // block))
        run_z = z[first:last] if first < z.size else np.zeros(1)
        strongest = float(run_z[np.argmax(np.abs(run_z))]) if run_z.size else 0.0
        entropy = float(emap.blocks[first:last].mean()) if last > first else 0.0
        outlier = Outlier((c.start, c.end), range_region((c.start, c.end), n), entropy, strongest, last - first,
                          kind=c.kind, reason=c.reason)
        (drawn if model.ranges.draws_hints(c.kind) else withheld).append(outlier)
    covered = sum(o.blocks for o in drawn + withheld)
    return AnomalyReport(score=range_score(candidates, model.ranges), zscores=z, outliers=drawn[:max_outliers],
                         outlier_blocks=covered, median=median, scale=scale, withheld=withheld[:max_outliers])
