"""Shared vocabulary of image checks: the status enum, the finding shape, timestamps, baseline paths.

``healing.analysis`` (the checker) and ``healing.images`` (registry, service) both use these, so a
result written by either has the `check --json` shape of DESIGN.md §4.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any


class HealthStatus(StrEnum):
    """The guide's status enum; a str subclass so that ``status == "critical"`` also holds."""

    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


def iso_now() -> str:
    """Now as ISO 8601 UTC with milliseconds and a 'Z' (the `timestamp` of a check)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finding(category: str, severity: str, description: str, *, byte_range: tuple[int, int] | list[int] | None = None,
            region: list[int] | None = None, source: str = "registry") -> dict[str, Any]:
    """One finding in the `check --json` shape."""
    return {"category": category, "severity": severity, "description": description,
            "byte_range": list(byte_range) if byte_range is not None else None, "region": region, "source": source}


def baseline_file(home: Path, file_sha256: str) -> Path:
    """Where the baseline of the file with this sha256 lives (content-addressed like the golden store)."""
    return home / "baselines" / file_sha256[:2] / f"{file_sha256}.json"
