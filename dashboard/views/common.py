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
