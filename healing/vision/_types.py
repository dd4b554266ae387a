"""Data carried between the checker and the vision providers.

The providers never import ``healing.analysis``: the checker hands them an :class:`AnalysisContext`
holding the pixels, the entropy overlay and numbers it has already computed, and gets back a
:class:`ProviderResult` — a status *suggestion* with a confidence and findings. Whether that
suggestion may decide anything is the checker's call (DESIGN.md §5: integrity beats statistics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

CATEGORIES = ("corruption", "anomaly", "structural", "security", "performance")
SEVERITIES = ("low", "medium", "high")
STATUSES = ("healthy", "warning", "critical", "unknown")

# How many merged byte ranges one finding lists in its report; the overall byte_range is always exact.
MAX_REPORTED_RANGES = 64

Region = tuple[int, int, int, int]  # x, y, w, h in pixel coordinates of the full image


@dataclass(frozen=True)
class EntropyOutlier:
    """A block whose entropy stands out, as the analysis engine found it.

    ``region`` is in pixel coordinates of the full image; ``zscore`` is the block's distance from the
    image's mean block entropy in standard deviations (None when the analysis did not compute one).
    """

    region: Region
    entropy: float
    zscore: float | None = None

    @classmethod
    def coerce(cls, value: EntropyOutlier | Mapping[str, Any]) -> EntropyOutlier:
        """Accept an outlier or a plain mapping ``{"region": [x, y, w, h], "entropy", "zscore"}``."""
        if isinstance(value, EntropyOutlier):
            return value
        x, y, w, h = (int(v) for v in value["region"])
        z = value.get("zscore")
        return cls(region=(x, y, w, h), entropy=float(value["entropy"]), zscore=None if z is None else float(z))


@dataclass
class AnalysisContext:
    """Everything a provider may look at for one image.

    pixels:      the full image as an (H, W, 4) RGBA, (H, W, 3) RGB or (H, W) grey uint8 array.
    grid_size:   n for a PixelRTS grid (square, power of two), so regions map to byte ranges along
                 the Hilbert curve; None for a plain PNG, whose pixels have no byte order.
    overlay:     the entropy overlay as an RGB(A) array or PNG bytes, or None.
    metadata:    the PixelRTS metadata dict (only whitelisted fields are ever sent to a model).
    metrics:     numbers the analysis computed: ``anomaly_score`` (0..1), ``mean_entropy``, ``hash_verified``…
    outliers:    entropy outliers, for the statistical provider and as hints in the prompt.
    """

    image_path: str
    pixels: Any
    grid_size: int | None = None
    overlay: Any = None
    metadata: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    outliers: Sequence[EntropyOutlier | Mapping[str, Any]] = ()

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the full image."""
        shape = getattr(self.pixels, "shape", None)
        if not shape or len(shape) < 2:
            raise ValueError("AnalysisContext.pixels must be an image array of shape (H, W[, C])")
        return int(shape[1]), int(shape[0])

    def entropy_outliers(self) -> list[EntropyOutlier]:
        return [EntropyOutlier.coerce(o) for o in self.outliers]


@dataclass
class Finding:
    """One issue a provider reports, in the shape of a finding of ``check --json`` (DESIGN.md §4)."""

    category: str
    severity: str
    description: str
    source: str
    region: Region | None = None
    byte_ranges: tuple[tuple[int, int], ...] = ()

    @property
    def byte_range(self) -> tuple[int, int] | None:
        """Overall [start, end) spanned by the region's bytes, or None when there is no mapping."""
        if not self.byte_ranges:
            return None
        return self.byte_ranges[0][0], self.byte_ranges[-1][1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "category": self.category,
            "severity": self.severity,
            "description": self.description,
            "byte_range": list(self.byte_range) if self.byte_range else None,
            "region": list(self.region) if self.region else None,
            "source": self.source,
        }
        if self.byte_ranges:
            out["byte_ranges"] = [list(r) for r in self.byte_ranges[:MAX_REPORTED_RANGES]]
            if len(self.byte_ranges) > MAX_REPORTED_RANGES:
                out["byte_ranges_total"] = len(self.byte_ranges)
        return out


@dataclass
class ProviderResult:
    """What one provider concluded about one image.

    ``status`` is a suggestion (healthy|warning|critical, or unknown when the provider failed or its
    answer was unusable); ``ok`` is False exactly when the provider failed, and then ``error`` is one
    line naming the provider and the reason. Failed providers do not vote in an ensemble.
    """

    provider: str
    ok: bool
    status: str = "unknown"
    confidence: float = 0.0
    summary: str = ""
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    model: str | None = None
    answer_format: str | None = None  # "json", "bullets" or "statistics": how the answer was read
    attempts: int = 0
    duration_ms: int = 0

    @classmethod
    def failure(cls, provider: str, reason: str, *, model: str | None = None, attempts: int = 0,
                duration_ms: int = 0) -> ProviderResult:
        reason = " ".join(str(reason).split())
        return cls(provider=provider, ok=False, error=f"{provider}: {reason}", model=model,
                   attempts=attempts, duration_ms=duration_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "status": self.status,
            "confidence": round(self.confidence, 4),
            "summary": self.summary,
            "findings": [f.to_dict() for f in self.findings],
            "error": self.error,
            "model": self.model,
            "answer_format": self.answer_format,
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
        }


@runtime_checkable
class VisionProvider(Protocol):
    """A source of opinions about an image. ``analyze`` never raises: failures come back as results."""

    name: str

    def analyze(self, context: AnalysisContext) -> ProviderResult: ...
