"""Baseline paths of registered images, and the status vocabulary re-exported from healing.analysis.status."""

from __future__ import annotations

from pathlib import Path

# The vocabulary is defined by the analysis package (it owns the checker); re-exported here so that
# existing imports from healing.images keep working.
from healing.analysis.status import HealthStatus, finding, iso_now

__all__ = ["HealthStatus", "baseline_file", "finding", "iso_now"]


def baseline_file(home: Path, file_sha256: str) -> Path:
    """Where the baseline of the file with this sha256 lives (content-addressed like the golden store)."""
    return home / "baselines" / file_sha256[:2] / f"{file_sha256}.json"
