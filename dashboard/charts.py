"""Pure Plotly figure builders: plain data in, ``go.Figure`` out (no Streamlit, no database).

Tests inspect the returned figures directly (trace values, axis titles, shapes), so every number a
chart shows is decided here and nowhere in the pages.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.safe import plot_text

STATUS_COLORS = {"healthy": "#2e7d32", "warning": "#f9a825", "critical": "#c62828", "unknown": "#757575"}
SEVERITY_COLORS = {"low": "#fdd835", "medium": "#fb8c00", "high": "#e53935"}

# metric column of the check-history frame → (chart title, y-axis title)
TREND_METRICS: dict[str, tuple[str, str]] = {
    "mean_entropy": ("Mean entropy", "bits per byte"),
    "anomaly_score": ("Anomaly score", "score (0–1)"),
    "duration_ms": ("Check duration", "milliseconds"),
}
# Largest side of an image drawn in the browser; bigger images are shown subsampled.
MAX_DISPLAY_SIDE = 1024


def fleet_status_figure(counts: Mapping[str, int]) -> go.Figure:
    """One bar per status (healthy, warning, critical, unknown) with the image count on it."""
    statuses = list(STATUS_COLORS)
    values = [int(counts.get(s, 0)) for s in statuses]
    fig = go.Figure(go.Bar(x=statuses, y=values, text=values, textposition="auto",
                           marker_color=[STATUS_COLORS[s] for s in statuses]))
    fig.update_layout(title="Images by status", xaxis_title="status", yaxis_title="images",
                      margin={"l": 40, "r": 10, "t": 40, "b": 40}, height=260)
    return fig


def trend_figure(history: pd.DataFrame, metric: str, *, warning: float | None = None,
                 critical: float | None = None) -> go.Figure:
    """A metric of an image's check history over time (oldest → newest), markers coloured by status.

    ``history`` is storage.queries.check_history_frame's frame. Rows where the metric is missing
    (older checks that did not compute it) are left out rather than drawn as zero. ``warning`` and
    ``critical`` draw the thresholds as horizontal lines (the anomaly-score chart).
    """
    if metric not in TREND_METRICS:
        raise ValueError(f"unknown trend metric {metric!r} (expected one of {', '.join(TREND_METRICS)})")
    title, y_title = TREND_METRICS[metric]
    frame = history[history[metric].notna()] if metric in history else history.iloc[0:0]
    statuses = list(frame["status"]) if "status" in frame else []
    fig = go.Figure(go.Scatter(
        x=list(frame["created_at"]) if len(frame) else [],
        y=[float(v) for v in frame[metric]] if len(frame) else [],
        mode="lines+markers", name=title,
        marker={"color": [STATUS_COLORS.get(s, STATUS_COLORS["unknown"]) for s in statuses], "size": 7},
        line={"color": "#90a4ae"},
        customdata=statuses, hovertemplate="%{x}<br>%{y}<br>%{customdata}<extra></extra>",
    ))
    for value, name, color in ((warning, "warning", STATUS_COLORS["warning"]), (critical, "critical", STATUS_COLORS["critical"])):
        if value is not None:
            fig.add_hline(y=value, line_dash="dash", line_color=color, annotation_text=name)
    if metric in TREND_RANGES:
        low, high = TREND_RANGES[metric]
        fig.update_yaxes(range=[low - (high - low) * 0.03, high + (high - low) * 0.03])
    fig.update_layout(title=title, xaxis_title="check time (UTC)", yaxis_title=y_title,
                      margin={"l": 50, "r": 10, "t": 40, "b": 40}, height=280, showlegend=False)
    return fig


STATUS_ORDER = ("healthy", "warning", "critical", "unknown")
# fixed y ranges of the statistics trends: a 0.0001 change of mean entropy must not look like a cliff
TREND_RANGES = {"mean_entropy": (0.0, 8.0), "anomaly_score": (0.0, 1.0)}


def status_timeline_figure(history: pd.DataFrame) -> go.Figure:
    """The status of every check over time, one row per status: what the operator was told, when.

    ``history`` is storage.queries.check_history_frame's frame (created_at, status, reused_analysis …).
    Markers are coloured by status; a reused analysis (file unchanged) is drawn hollow."""
    fig = go.Figure()
    for status in STATUS_ORDER:
        rows = history[history["status"] == status] if len(history) else history
        if not len(rows):
            continue
        reused = [bool(v) for v in rows["reused_analysis"]] if "reused_analysis" in rows else [False] * len(rows)
        fig.add_trace(go.Scatter(
            x=list(rows["created_at"]), y=[status] * len(rows), mode="markers", name=status,
            marker={"color": STATUS_COLORS[status], "size": 11, "symbol": ["circle-open" if r else "circle" for r in reused],
                    "line": {"width": 2, "color": STATUS_COLORS[status]}},
            customdata=["analysis reused (file unchanged)" if r else "analysed" for r in reused],
            hovertemplate="%{x}<br>" + status + " · %{customdata}<extra></extra>"))
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(reversed(STATUS_ORDER)),
                     range=[-0.5, len(STATUS_ORDER) - 0.5], title=None)
    fig.update_layout(title="Status of each check", xaxis_title="check time (UTC)", showlegend=False,
                      margin={"l": 80, "r": 10, "t": 40, "b": 40}, height=240)
    return fig


def display_array(pixels: np.ndarray, max_side: int = MAX_DISPLAY_SIDE) -> tuple[np.ndarray, int]:
    """Subsample an image array to at most ``max_side`` per side; returns (array, stride)."""
    height, width = pixels.shape[:2]
    stride = max(1, -(-max(height, width) // max_side))
    return (pixels[::stride, ::stride] if stride > 1 else pixels), stride


def png_data_uri(pixels: np.ndarray) -> str:
    """A data: URI holding ``pixels`` (H×W grey, RGB or RGBA uint8) as PNG, for go.Image(source=…)."""
    from PIL import Image

    array = np.ascontiguousarray(pixels.astype(np.uint8, copy=False))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def findings_overlay_figure(pixels: np.ndarray, findings: Sequence[Mapping[str, Any]], *,
                            title: str = "Findings") -> go.Figure:
    """The image with one rectangle per finding that has a pixel region, coloured by severity.

    Regions are ``[x, y, w, h]`` in full-image pixels; the image may be shown subsampled, so the
    axes keep full-image coordinates (each displayed pixel spans ``stride`` image pixels).
    """
    shown, stride = display_array(pixels)
    height, width = pixels.shape[:2]
    fig = go.Figure(go.Image(source=png_data_uri(shown), x0=0, y0=0, dx=stride, dy=stride))
    for i, item in enumerate(findings):
        region = item.get("region")
        if not region:
            continue
        x, y, w, h = (float(v) for v in region)
        color = SEVERITY_COLORS.get(str(item.get("severity")), SEVERITY_COLORS["medium"])
        fig.add_shape(type="rect", x0=x, y0=y, x1=x + w, y1=y + h, line={"color": color, "width": 2},
                      name=f"finding {i + 1}")
        fig.add_annotation(x=x, y=y, text=str(i + 1), showarrow=False, font={"color": color}, xanchor="left", yanchor="bottom")
    fig.update_xaxes(range=[0, width], showgrid=False, title="x (pixels)")
    fig.update_yaxes(range=[height, 0], showgrid=False, title="y (pixels)", scaleanchor="x")
    fig.update_layout(title=title, margin={"l": 40, "r": 10, "t": 40, "b": 40}, height=480)
    return fig


def heatmap_figure(values: np.ndarray, *, title: str, colorbar_title: str, colorscale: str = "Viridis",
                   cell: tuple[float, float] = (1.0, 1.0), zmin: float | None = None,
                   zmax: float | None = None) -> go.Figure:
    """A 2-D map (entropy per block, edge magnitude, log spectrum …) as a heatmap.

    ``cell`` is (width, height) of one value in image pixels, so axes read in image coordinates.
    """
    grid = np.asarray(values, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {grid.shape}")
    shown, stride = display_array(grid)
    dx, dy = cell[0] * stride, cell[1] * stride
    fig = go.Figure(go.Heatmap(z=shown, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, colorscale=colorscale,
                               zmin=zmin, zmax=zmax, colorbar={"title": {"text": colorbar_title}}))
    fig.update_yaxes(autorange="reversed", title="y (pixels)", scaleanchor="x")
    fig.update_xaxes(title="x (pixels)")
    fig.update_layout(title=title, margin={"l": 40, "r": 10, "t": 40, "b": 40}, height=480)
    return fig


# judge classification of a metric → bar colour
JUDGE_COLORS = {"pass": "#2e7d32", "high": "#c62828", "low": "#c62828", "nodata": "#9e9e9e"}
# bars of metrics far outside their allowed range stop here (× the limit)
LIMIT_SHARE_CAP = 2.0
# numbers stored next to the components of a pre-judge breakdown that are settings, not results
_NOT_COMPONENTS = {"pass_threshold", "marginal_threshold", "score"}


def _limit_share(entry: Mapping[str, Any]) -> float:
    """A judged metric's value against its allowed limit: 1 is at the limit, above 1 outside it (capped)."""
    value, lo, hi = entry.get("value"), entry.get("min"), entry.get("max")
    if value is None:
        return 0.0
    shares = []
    if hi is not None:
        shares.append(value / hi if hi > 0 else (0.0 if value <= hi else LIMIT_SHARE_CAP))
    if lo is not None:
        shares.append(lo / value if value > 0 else (0.0 if value >= lo else LIMIT_SHARE_CAP))
    return round(min(max(shares, default=0.0), LIMIT_SHARE_CAP), 4)


def score_breakdown_figure(breakdown: Mapping[str, Any] | None, *, title: str = "Score breakdown") -> go.Figure:
    """The judge's result per metric: one bar each, its value as a share of the allowed limit (1 = at the
    limit, a dashed line), green when it passed, red high/low, grey without data; verdict and score in
    the title. A breakdown from before the judge (weighted components) shows its numeric components."""
    breakdown = breakdown or {}
    per_metric = breakdown.get("per_metric")
    if isinstance(per_metric, Mapping):
        return _judge_figure(breakdown, per_metric, title)
    components = breakdown.get("components")
    source = components if isinstance(components, Mapping) else {k: v for k, v in breakdown.items() if k not in _NOT_COMPONENTS}
    # Component names come from the database; Plotly renders some HTML tags (<a href>) in labels.
    items = [(plot_text(k), float(v)) for k, v in source.items()
             if isinstance(v, int | float) and not isinstance(v, bool)]
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           text=[f"{v:.3g}" for _, v in items], textposition="auto",
                           marker_color=["#2e7d32" if v >= 0 else "#c62828" for _, v in items]))
    fig.update_layout(title=title, xaxis_title="contribution", yaxis_title="component",
                      margin={"l": 120, "r": 10, "t": 40, "b": 40}, height=max(200, 60 + 30 * len(items)))
    fig.update_yaxes(autorange="reversed")
    return fig


def _judge_figure(breakdown: Mapping[str, Any], per_metric: Mapping[str, Any], title: str) -> go.Figure:
    names, shares, colors, labels, hovers = [], [], [], [], []
    for name, entry in per_metric.items():
        if not isinstance(entry, Mapping):
            continue
        kind = str(entry.get("classification", "nodata"))
        names.append(plot_text(name) + (" (critical)" if entry.get("critical") else ""))
        shares.append(_limit_share(entry))
        colors.append(JUDGE_COLORS.get(kind, JUDGE_COLORS["nodata"]))
        labels.append(plot_text(kind if kind != "nodata" else "no data"))
        hovers.append(plot_text(entry.get("why", "")))
    fig = go.Figure(go.Bar(x=shares, y=names, orientation="h", text=labels, textposition="auto",
                           hovertext=hovers, marker_color=colors))
    fig.add_vline(x=1.0, line_dash="dash", line_color="#424242")
    score = breakdown.get("score")
    verdict = plot_text(breakdown.get("verdict", "?"))
    head = f"{plot_text(title)}: {verdict}" + (f", score {score:.2f}" if isinstance(score, int | float) else "")
    fig.update_layout(title=head, xaxis_title="value / allowed limit (1 = at the limit)", yaxis_title="metric",
                      xaxis_range=[0, LIMIT_SHARE_CAP * 1.05],
                      margin={"l": 160, "r": 10, "t": 40, "b": 40}, height=max(200, 60 + 30 * len(names)))
    fig.update_yaxes(autorange="reversed")
    return fig


def rate_limit_figure(state: Mapping[str, Any]) -> go.Figure:
    """A gauge of runs used in the rate-limit window against the maximum."""
    used, maximum = int(state["runs_used"]), int(state["max_runs"])
    fig = go.Figure(go.Indicator(
        mode="gauge+number", value=used, title={"text": f"{plot_text(state['subsystem'])}: runs in window"},
        gauge={"axis": {"range": [0, max(maximum, 1)]},
               "bar": {"color": STATUS_COLORS["critical"] if used >= maximum else STATUS_COLORS["healthy"]}},
    ))
    fig.update_layout(height=200, margin={"l": 20, "r": 20, "t": 50, "b": 10})
    return fig
