"""Integrity-only health check and baseline, used by the registry and the worker.

``IntegrityChecker`` is the check the worker falls back to when ``healing.analysis`` (the full
statistical/vision checker) is not importable: it proves integrity with the codec (data hash,
segments, padding) and, given a baseline, names the damaged blocks. Its results have the shape of
``check --json`` (DESIGN.md §4), so the worker stores either checker's output the same way.

``build_baseline`` records what a later check compares against: the file's sha256, the payload's
``data_hash``, and per-block sha256 and Shannon entropy (bits per byte) of the curve-ordered stream.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from healing.errors import CorruptedError, InputError

BASELINE_VERSION = 1
MAX_LISTED_BLOCKS = 64  # a finding names at most this many damaged byte ranges


class HealthStatus(StrEnum):
    """The guide's status enum; a str subclass so that ``status == "critical"`` also holds."""

    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


@dataclass
class CheckResult:
    """A health check result with the guide's HealthCheckResult fields (see DESIGN.md §4)."""

    image_path: str
    status: HealthStatus
    confidence: float
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    recommendation: str = ""
    timestamp: str = ""
    duration_ms: float = 0.0

    @property
    def summary(self) -> str:
        return self.findings[0]["description"] if self.findings else self.recommendation

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_path": self.image_path,
            "status": HealthStatus(self.status).value,
            "confidence": self.confidence,
            "metrics": dict(self.metrics),
            "findings": [dict(f) for f in self.findings],
            "recommendation": self.recommendation,
            "timestamp": self.timestamp,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            image_path=str(data["image_path"]),
            status=HealthStatus(str(data.get("status", "unknown"))),
            confidence=float(data.get("confidence") or 0.0),
            metrics=dict(data.get("metrics") or {}),
            findings=[dict(f) for f in data.get("findings") or []],
            recommendation=str(data.get("recommendation") or ""),
            timestamp=str(data.get("timestamp") or ""),
            duration_ms=float(data.get("duration_ms") or 0.0),
        )


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finding(category: str, severity: str, description: str, *, byte_range: tuple[int, int] | list[int] | None = None,
            region: list[int] | None = None, source: str = "integrity") -> dict[str, Any]:
    """One finding in the `check --json` shape."""
    return {"category": category, "severity": severity, "description": description,
            "byte_range": list(byte_range) if byte_range is not None else None, "region": region, "source": source}


def _block_entropy(blocks: Any) -> Any:
    """Shannon entropy (bits per byte) of each row of a 2-D uint8 array, vectorised via one bincount."""
    import numpy as np

    count, size = blocks.shape
    offsets = (np.arange(count, dtype=np.int64) * 256)[:, None]
    hist = np.bincount((blocks.astype(np.int64) + offsets).ravel(), minlength=count * 256).reshape(count, 256)
    p = hist / float(size)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    return ent


def build_baseline(image: Any, *, block_size: int, file_sha256: str) -> dict[str, Any]:
    """Baseline of a decoded PixelRTSImage: per-block sha256 and entropy of its curve-ordered stream."""
    import numpy as np

    stream = image.stream
    n_blocks = -(-stream.size // block_size)
    hashes = [hashlib.sha256(stream[i * block_size:(i + 1) * block_size].tobytes()).hexdigest() for i in range(n_blocks)]
    full = stream.size // block_size
    entropy = _block_entropy(stream[: full * block_size].reshape(full, block_size)).tolist() if full else []
    if full < n_blocks:
        entropy.append(float(_block_entropy(stream[full * block_size:].reshape(1, -1))[0]))
    meta = image.metadata or {}
    return {
        "version": BASELINE_VERSION,
        "file_sha256": file_sha256,
        "data_hash": meta.get("data_hash"),
        "grid_size": image.grid_size,
        "stream_length": int(stream.size),
        "block_size": block_size,
        "block_sha256": hashes,
        "block_entropy": [round(float(e), 4) for e in entropy],
        "mean_entropy": round(float(np.mean(entropy)) if entropy else 0.0, 4),
    }


def changed_blocks(image: Any, baseline: dict[str, Any]) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the stream whose block hash differs from the baseline (merged).

    The caller makes sure the grid sizes agree, so both streams have the same length."""
    block = int(baseline["block_size"])
    stream = image.stream
    expected = baseline.get("block_sha256") or []
    ranges: list[tuple[int, int]] = []
    for i, want in enumerate(expected):
        start, end = i * block, min((i + 1) * block, stream.size)
        if hashlib.sha256(stream[start:end].tobytes()).hexdigest() != want:
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
    return ranges


class IntegrityChecker:
    """Integrity-only checker with the guide's ``check_health(path, baseline=...)`` call."""

    def __init__(self, *, max_pixels: int | None = None) -> None:
        self.max_pixels = max_pixels

    def check_health(self, path: str | os.PathLike[str], baseline: dict[str, Any] | None = None, **_: Any) -> CheckResult:
        """Check one file; never raises for bad input (unreadable → unknown, damaged → critical)."""
        from healing.pixelrts import verify

        start = time.perf_counter()
        path = str(path)
        result = CheckResult(path, HealthStatus.UNKNOWN, 0.0, timestamp=iso_now())
        try:
            report = verify(path, max_pixels=self.max_pixels)
        except CorruptedError as exc:
            result.status, result.confidence = HealthStatus.CRITICAL, 0.95
            result.findings.append(finding("structural", "high", str(exc)))
            result.recommendation = "restore the image from its golden copy"
        except InputError as exc:
            result.findings.append(finding("structural", "medium", str(exc)))
            result.recommendation = "make the file readable, or check that it is a PixelRTS image"
        else:
            self._judge(result, report, baseline)
        result.duration_ms = round((time.perf_counter() - start) * 1000, 3)
        return result

    def _judge(self, result: CheckResult, report: Any, baseline: dict[str, Any] | None) -> None:
        image = report.image
        result.metrics.update({"data_size": image.data_size, "grid_size": image.grid_size,
                               "hash_verified": report.hash_verified, "anomaly_score": 0.0})
        for problem in report.problems:
            severe = problem.kind in ("hash_mismatch", "padding", "segment_mismatch", "structure")
            result.findings.append(finding("corruption" if severe else "structural", "high" if severe else "low",
                                           problem.message, byte_range=problem.byte_range))
        ranges: list[tuple[int, int]] | None = None
        if baseline and baseline.get("block_sha256") and baseline.get("grid_size") == image.grid_size:
            ranges = changed_blocks(image, baseline)
            result.metrics["changed_blocks_bytes"] = sum(e - s for s, e in ranges)
            if ranges and report.hash_verified is not True:
                for s, e in ranges[:MAX_LISTED_BLOCKS]:
                    result.findings.append(finding("corruption", "high", f"stream bytes [{s}, {e}) differ from the baseline",
                                                   byte_range=(s, e)))
        severe = any(f["category"] == "corruption" for f in result.findings)
        if severe:
            result.status, result.confidence = HealthStatus.CRITICAL, 0.99
            result.recommendation = "restore the image from its golden copy"
        elif report.ok:
            result.status, result.confidence = HealthStatus.HEALTHY, 0.99
            result.recommendation = "no action required"
        elif not image.is_pixelrts and ranges == []:
            # No hash of its own, but every block matches the registered baseline: nothing changed.
            result.status, result.confidence = HealthStatus.HEALTHY, 0.9
            result.recommendation = "no action required (plain PNG, identical to its baseline)"
        elif image.is_pixelrts:
            result.status, result.confidence = HealthStatus.WARNING, 0.6
            result.recommendation = "integrity cannot be fully proven; re-register the image with complete metadata"
        else:
            # A plain PNG with no baseline difference: no hash can decide, and this checker has no statistics.
            result.status, result.confidence = HealthStatus.UNKNOWN, 0.3
            result.recommendation = "plain PNG without PixelRTS metadata: integrity cannot be proven"


def baseline_file(home: Path, file_sha256: str) -> Path:
    """Where the baseline of the file with this sha256 lives (content-addressed like the golden store)."""
    return home / "baselines" / file_sha256[:2] / f"{file_sha256}.json"
