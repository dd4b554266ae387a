"""The guide's Python API details: dict-like analyzer results, vision findings by category, the
result cache (health_check.cache_results / cache_ttl), and the config's logging for every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from healing.analysis import PatternDetector, PixelRTSVisionAnalyzer, VLMHealthChecker
from healing.config import load_settings
from tests.analysis.conftest import random_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_results_read_as_objects_and_as_dicts(make_rts) -> None:
    path = make_rts(random_bytes(40_000), name="k.rts.png")
    detector = PatternDetector(path)
    fourier = detector.analyze_fourier()
    assert fourier["dominant_frequency"] == list(fourier.dominant_frequency)
    assert fourier["has_periodic_patterns"] is fourier.has_periodic_patterns
    clusters = detector.detect_clusters(eps=5.0, min_samples=10, feature_type="position")
    assert clusters["num_clusters"] == clusters.num_clusters and dict(clusters) == clusters.to_dict()
    edges = detector.detect_edges_sobel()
    assert edges["edge_count"] == edges.edge_count and "edge_density" in edges and "nope" not in edges
    with pytest.raises(KeyError):
        fourier["nope"]


def test_parse_vision_findings_groups_by_category(make_rts) -> None:
    analyzer = PixelRTSVisionAnalyzer(make_rts(random_bytes(4_000), name="k.rts.png"))  # a 32x32 grid
    answer = ('{"status": "critical", "confidence": 0.9, "summary": "s", "findings": ['
              '{"category": "security", "severity": "high", "description": "ransomware-like noise", "region": [4, 4, 100, 100]},'
              '{"category": "corruption", "severity": "medium", "description": "stripe"}]}')
    assert analyzer.parse_vision_findings(answer) == {
        "corruption": [{"severity": "medium", "description": "stripe", "region": None}],
        "anomaly": [],
        "structural": [],
        "security": [{"severity": "high", "description": "ransomware-like noise", "region": [4, 4, 28, 28]}],
        "performance": [],
    }
    bullets = "Anomaly:\n- high entropy block at [0, 0, 8, 8]\n"
    assert analyzer.parse_vision_findings(bullets)["anomaly"][0]["region"] == [0, 0, 8, 8]
    assert analyzer.parse_vision_findings("no idea") == {c: [] for c in
                                                         ("corruption", "anomaly", "structural", "security", "performance")}


def test_cached_results_are_reused_until_the_file_changes_or_the_ttl_ends(make_rts, tmp_path: Path, monkeypatch) -> None:
    path = make_rts(random_bytes(20_000), name="k.rts.png")
    config = tmp_path / "c.yaml"
    config.write_text("health_check:\n  cache_results: true\n  cache_ttl: 600\n", encoding="utf-8")
    checker = VLMHealthChecker(load_settings(config, env={"SELFHEAL_HOME": str(tmp_path)}))
    first = checker.check_health(path)
    second = checker.check_health(path)
    assert "cached" not in first.metrics and second.metrics["cached"] is True
    assert (second.timestamp, second.status, second.findings) == (first.timestamp, first.status, first.findings)
    assert checker.check_health(path, verbose=True).metrics.get("cached") is None  # other arguments: checked again
    os.utime(path, ns=(1, 1))  # the file changed (mtime): checked again
    assert "cached" not in checker.check_health(path).metrics
    import healing.analysis.health as health

    clock = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: clock[0])
    checker = VLMHealthChecker(checker.settings)  # a fresh cache, timed by the fake clock
    checker.check_health(path)
    assert checker.check_health(path).metrics["cached"] is True
    clock[0] += 601
    assert "cached" not in checker.check_health(path).metrics
    off = VLMHealthChecker(load_settings(env={"SELFHEAL_HOME": str(tmp_path)}))
    off.check_health(path)
    assert "cached" not in off.check_health(path).metrics  # off by default


def test_unreadable_input_has_nan_metrics_and_null_in_json(tmp_path: Path) -> None:
    result = VLMHealthChecker(load_settings(env={"SELFHEAL_HOME": str(tmp_path)})).check_health(tmp_path / "missing.png")
    assert result.status.value == "unknown"
    assert f"{result.metrics['mean_entropy']:.2f} {result.metrics['anomaly_score']:.2f}" == "nan nan"
    data = result.to_dict()["metrics"]
    assert (data["mean_entropy"], data["anomaly_score"], data["data_size"], data["hash_verified"]) == (None, None, None, None)


def test_the_config_logging_section_applies_to_other_commands(make_rts, tmp_path: Path) -> None:
    image = make_rts(random_bytes(20_000), name="k.rts.png")
    log_file = tmp_path / "selfheal.log"
    config = tmp_path / "c.yaml"
    config.write_text(f"logging:\n  level: DEBUG\n  file: {log_file}\n  format: 'LOG %(levelname)s %(name)s | %(message)s'\n",
                      encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "healing", "check", str(image), "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SELFHEAL_HOME": str(tmp_path / "h")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # logged to the file, not the terminal
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert f"LOG DEBUG selfheal.checker | check {image}: loading (max_pixels 67108864)" in lines
    assert all(line.startswith("LOG ") for line in lines)
