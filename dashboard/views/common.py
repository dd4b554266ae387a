"""Small drawing helpers shared by the pages (formatting, empty states, the current operator)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from dashboard.auth import current_operator
from dashboard.config import DashboardSettings, dashboard_settings
from healing.config import Settings, load_settings

STATUS_ICONS = {"healthy": "🟢", "warning": "🟡", "critical": "🔴", "unknown": "⚪"}


def settings() -> Settings:
    """The effective settings (read per run: cheap, and a changed config shows up without a restart)."""
    return load_settings()


def dash_settings() -> DashboardSettings:
    return dashboard_settings(settings())


def operator() -> str:
    """The logged-in operator; the router guarantees one exists before any page runs."""
    name = current_operator()
    if not name:
        st.error("Not logged in.")
        st.stop()
    return name


def fmt_time(value: datetime | None) -> str:
    """A UTC timestamp as 'YYYY-MM-DD HH:MM:SS UTC', or '—'."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    """Seconds as a short human duration ('2h05m', '3m10s', '42s')."""
    if seconds is None:
        return "—"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def status_label(status: str | None) -> str:
    status = status or "unknown"
    return f"{STATUS_ICONS.get(status, '⚪')} {status}"


def findings_rows(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings flattened for a table: byte ranges and regions as text (mixed types break Arrow)."""
    rows = []
    for i, f in enumerate(findings, start=1):
        byte_range = f.get("byte_range")
        region = f.get("region")
        rows.append({
            "#": i,
            "severity": f.get("severity"),
            "category": f.get("category"),
            "description": f.get("description"),
            "byte range": f"[{byte_range[0]}, {byte_range[1]})" if byte_range else "—",
            "bytes": (byte_range[1] - byte_range[0]) if byte_range else None,
            "region (x, y, w, h)": ", ".join(str(v) for v in region) if region else "—",
            "source": f.get("source"),
        })
    return rows


def verdict_line(check: dict[str, Any] | None, *, warning: float | None = None, critical: float | None = None) -> str:
    """Why the status is what it is, in one line ("Healthy: payload sha256 verified; statistics not used").

    When the image carries its payload's sha256 and it verifies, the hash decides and the statistics are
    only shown; a failed hash is corruption whatever the statistics say; without a hash (a plain PNG, a
    stripped sidecar) the statistics decide, against the configured thresholds."""
    if check is None:
        return "Not checked yet."
    status = str(check.get("status") or "unknown")
    word = status.capitalize()
    metrics = check.get("metrics") or {}
    findings = list(check.get("findings") or [])
    first = next((str(f.get("description")) for f in findings if f.get("severity") == "high"), None) or (
        str(findings[0].get("description")) if findings else None)
    verified = metrics.get("hash_verified")
    reused = " (file unchanged since the last analysis)" if check.get("reused_analysis") else ""
    if status == "unknown":
        return f"Unknown: {first or 'the file could not be analysed'}{reused}"
    if verified is True:
        if any(f.get("category") == "security" for f in findings):
            return (f"{word}: payload sha256 verifies, but the file differs from its golden copy (an unexpected "
                    f"change: accept it or heal it); statistics not used{reused}")
        if status == "healthy":
            return f"Healthy: payload sha256 verified; statistics not used{reused}"
        return f"{word}: payload sha256 verified; {first or 'see the findings'}{reused}"
    if verified is False:
        return f"{word}: payload sha256 does not match — the data is corrupted{'; ' + first if first else ''}{reused}"
    score = metrics.get("anomaly_score")
    if score is None:
        return f"{word}: {first or 'no payload hash and no statistics'}{reused}"
    limits = (f" (warning at {warning:g}, critical at {critical:g})" if warning is not None and critical is not None
              else "")
    return f"{word}: no payload hash to verify; judged by statistics, anomaly score {float(score):.3f}{limits}{reused}"
