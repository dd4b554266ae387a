"""The status vocabulary of image checks: the guide's ``HealthStatus``, the finding shape, timestamps.

It belongs to the analysis package, which defines the checker; ``healing.images`` (registry,
service) uses the same names, so a result written by either has the `check --json` shape of
DESIGN.md §4. Only the standard library is imported here: the CLI loads this at start-up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

CATEGORIES = ("corruption", "anomaly", "structural", "security", "performance")
SEVERITIES = ("low", "medium", "high")


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
            region: list[int] | tuple[int, ...] | None = None, source: str = "registry") -> dict[str, Any]:
    """One finding in the `check --json` shape."""
    return {"category": category, "severity": severity, "description": description,
            "byte_range": [int(byte_range[0]), int(byte_range[1])] if byte_range is not None else None,
            "region": [int(v) for v in region] if region is not None else None, "source": source}
