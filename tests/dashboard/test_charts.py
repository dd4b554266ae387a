"""Plotly figure builders as pure functions: trace values, colours, axis titles, shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from dashboard import charts

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _history() -> pd.DataFrame:
    return pd.DataFrame({
        "created_at": [T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)],
        "status": ["healthy", "warning", "critical"],
        "mean_entropy": [5.5, None, 7.25],
        "anomaly_score": [0.1, 0.75, 0.95],
        "duration_ms": [12.0, 13.5, 40.0],
    })


def test_fleet_status_figure() -> None:
    fig = charts.fleet_status_figure({"healthy": 7, "critical": 2, "total": 9})
    bar = fig.data[0]
    assert list(bar.x) == ["healthy", "warning", "critical", "unknown"]
    assert list(bar.y) == [7, 0, 2, 0]
    assert list(bar.marker.color) == ["#2e7d32", "#f9a825", "#c62828", "#757575"]
    assert fig.layout.xaxis.title.text == "status" and fig.layout.yaxis.title.text == "images"


def test_trend_figure_skips_missing_values_and_colours_by_status() -> None:
    fig = charts.trend_figure(_history(), "mean_entropy")
    trace = fig.data[0]
    assert list(trace.y) == [5.5, 7.25]
    assert list(trace.x) == [T0, T0 + timedelta(minutes=10)]
    assert list(trace.marker.color) == ["#2e7d32", "#c62828"]
    assert fig.layout.title.text == "Mean entropy"
    assert fig.layout.yaxis.title.text == "bits per byte"
    assert fig.layout.xaxis.title.text == "check time (UTC)"


def test_anomaly_trend_draws_thresholds() -> None:
    fig = charts.trend_figure(_history(), "anomaly_score", warning=0.7, critical=0.9)
    assert list(fig.data[0].y) == [0.1, 0.75, 0.95]
    lines = [(s.y0, s.line.color) for s in fig.layout.shapes]
    assert lines == [(0.7, "#f9a825"), (0.9, "#c62828")]
    assert fig.layout.yaxis.title.text == "score (0–1)"


def test_trend_figure_of_empty_history_and_unknown_metric() -> None:
    empty = _history().iloc[0:0]
    assert list(charts.trend_figure(empty, "duration_ms").data[0].y) == []
    with pytest.raises(ValueError, match="unknown trend metric 'bogus'"):
        charts.trend_figure(_history(), "bogus")


def test_findings_overlay_draws_one_rectangle_per_region() -> None:
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    findings = [
        {"severity": "high", "region": [8, 16, 4, 2]},
        {"severity": "low", "region": None},
        {"severity": "medium", "region": [0, 0, 64, 64]},
    ]
    fig = charts.findings_overlay_figure(pixels, findings)
    rects = [(s.x0, s.y0, s.x1, s.y1, s.line.color) for s in fig.layout.shapes]
    assert rects == [(8, 16, 12, 18, "#e53935"), (0, 0, 64, 64, "#fb8c00")]
    assert [a.text for a in fig.layout.annotations] == ["1", "3"]
    assert fig.data[0].source.startswith("data:image/png;base64,")
    assert tuple(fig.layout.yaxis.range) == (64, 0)


def test_large_images_are_subsampled_but_keep_image_coordinates() -> None:
    pixels = np.zeros((3000, 3000), dtype=np.uint8)
    shown, stride = charts.display_array(pixels)
    assert stride == 3 and shown.shape == (1000, 1000)
    fig = charts.findings_overlay_figure(pixels, [])
    assert (fig.data[0].dx, fig.data[0].dy) == (3, 3)
    assert tuple(fig.layout.xaxis.range) == (0, 3000)


def test_heatmap_figure_cells_and_titles() -> None:
    grid = np.arange(6, dtype=float).reshape(2, 3)
    fig = charts.heatmap_figure(grid, title="Entropy", colorbar_title="bits/byte", cell=(16, 16), zmin=0, zmax=8)
    heat = fig.data[0]
    assert np.asarray(heat.z).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (heat.x0, heat.dx, heat.y0, heat.dy) == (8, 16, 8, 16)
    assert (heat.zmin, heat.zmax) == (0, 8)
    assert heat.colorbar.title.text == "bits/byte"
    assert fig.layout.title.text == "Entropy"
    with pytest.raises(ValueError, match="2-D"):
        charts.heatmap_figure(np.zeros(3), title="x", colorbar_title="y")


def test_score_breakdown_keeps_numeric_components_in_order() -> None:
    fig = charts.score_breakdown_figure({"throughput": 0.5, "latency": -0.25, "note": "n/a", "gated": True})
    bar = fig.data[0]
    assert list(bar.y) == ["throughput", "latency"]
    assert list(bar.x) == [0.5, -0.25]
    assert list(bar.marker.color) == ["#2e7d32", "#c62828"]
    assert fig.layout.xaxis.title.text == "contribution"


def test_rate_limit_gauge() -> None:
    fig = charts.rate_limit_figure({"subsystem": "vllm", "runs_used": 3, "max_runs": 3})
    gauge = fig.data[0]
    assert gauge.value == 3 and tuple(gauge.gauge.axis.range) == (0, 3)
    assert gauge.gauge.bar.color == "#c62828"
    assert gauge.title.text == "vllm: runs in window"
