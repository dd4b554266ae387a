"""The offline statistical provider: given numbers in, findings with source "statistical" out."""

from __future__ import annotations

import pytest

from healing.vision import EntropyOutlier, StatisticalProvider

from .conftest import small_context


@pytest.mark.parametrize(("score", "status", "confidence"), [
    (0.0, "healthy", 1.0), (0.2, "healthy", 0.8571), (0.7, "warning", 0.5), (0.75, "warning", 0.75),
    (0.8, "warning", 1.0), (0.9, "critical", 0.5), (0.95, "critical", 0.75), (1.0, "critical", 1.0),
    (1.7, "critical", 1.0),  # clamped to 1
])
def test_status_and_confidence_follow_the_score(score, status, confidence):
    result = StatisticalProvider(0.7, 0.9).analyze(small_context(anomaly_score=score))
    assert (result.ok, result.status, result.confidence, result.answer_format) == (True, status, confidence, "statistics")


def test_outliers_become_findings_with_byte_ranges():
    context = small_context(anomaly_score=0.93)
    context.outliers = [
        {"region": [0, 3, 4, 1], "entropy": 0.5, "zscore": -3.5},
        EntropyOutlier(region=(1, 1, 2, 2), entropy=7.9, zscore=6.0),
        {"region": [0, 0, 1, 1], "entropy": 4.0, "zscore": None},
        {"region": [10, 10, 1, 1], "entropy": 4.0, "zscore": 9.0},  # outside the image: ignored
    ]
    result = StatisticalProvider().analyze(context)
    assert result.status == "critical"
    assert result.summary == "anomaly score 0.93 (warning 0.70, critical 0.90); 4 entropy outlier block(s)"
    assert [f.to_dict() for f in result.findings] == [
        {"category": "anomaly", "severity": "high", "source": "statistical", "region": [1, 1, 2, 2],
         "description": "entropy 7.90 bits/byte in the 2x2 block at (1, 1), z = +6.0",
         "byte_range": [8, 56], "byte_ranges": [[8, 12], [28, 36], [52, 56]]},
        {"category": "anomaly", "severity": "medium", "source": "statistical", "region": [0, 3, 4, 1],
         "description": "entropy 0.50 bits/byte in the 4x1 block at (0, 3), z = -3.5",
         "byte_range": [20, 44], "byte_ranges": [[20, 28], [36, 44]]},
        {"category": "anomaly", "severity": "low", "source": "statistical", "region": [0, 0, 1, 1],
         "description": "entropy 4.00 bits/byte in the 1x1 block at (0, 0)",
         "byte_range": [0, 4], "byte_ranges": [[0, 4]]},
    ]


def test_a_high_score_without_outliers_still_gets_a_finding():
    result = StatisticalProvider(0.7, 0.9).analyze(small_context(anomaly_score=0.8))
    assert [f.to_dict() for f in result.findings] == [{
        "category": "anomaly", "severity": "medium", "source": "statistical", "region": None, "byte_range": None,
        "description": "anomaly score 0.80 reaches the warning threshold 0.70",
    }]
    assert StatisticalProvider().analyze(small_context(anomaly_score=0.1)).findings == []


@pytest.mark.parametrize("score", [None, "0.5", True, float("nan")])
def test_without_a_score_the_provider_fails_and_does_not_guess(score):
    context = small_context()
    context.metrics = {"anomaly_score": score} if score is not None else {}
    result = StatisticalProvider().analyze(context)
    assert (result.ok, result.status, result.error) == (False, "unknown", "statistical: no anomaly_score in the analysis results")


def test_malformed_outliers_fail_cleanly():
    context = small_context()
    context.outliers = [{"entropy": 1.0}]
    assert StatisticalProvider().analyze(context).error == "statistical: entropy outliers are malformed"


def test_plain_png_outliers_have_no_byte_ranges():
    context = small_context(anomaly_score=0.5)
    context.grid_size = None
    context.outliers = [{"region": [0, 0, 2, 2], "entropy": 8.0, "zscore": 4.0}]
    (finding,) = StatisticalProvider().analyze(context).findings
    assert (finding.region, finding.byte_range, finding.severity) == ((0, 0, 2, 2), None, "medium")


def test_invalid_thresholds():
    with pytest.raises(ValueError):
        StatisticalProvider(0.9, 0.7)
