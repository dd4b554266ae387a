"""Guide snippet 0, "VLMHealthChecker": a healthy, a damaged and a missing kernel.rts.png."""

from __future__ import annotations

from healing.analysis import VLMHealthChecker
from healing.config import load_settings


def test_healthy_image_prints_the_guide_lines(guide_dir) -> None:
    proc = guide_dir.run("health_checker")
    assert proc.returncode == 0, proc.stderr
    expected = VLMHealthChecker(load_settings(env=guide_dir.env)).check_health(guide_dir.cwd / "kernel.rts.png")
    assert proc.stdout.splitlines() == [
        "System is healthy: 99.00%",
        f"Entropy: {expected.metrics['mean_entropy']:.2f}",
        "Anomaly score: 0.00",
        "Confidence: 99.00%",
    ]
    assert 5.0 < expected.metrics["mean_entropy"] < 7.0  # half text (≈4.3 bits/byte), half noise (8)


def test_damaged_image_takes_the_critical_branch(guide_dir) -> None:
    kernel = guide_dir.cwd / "kernel.rts.png"
    data = bytearray(kernel.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the PNG's CRC no longer matches
    kernel.write_bytes(bytes(data))
    proc = guide_dir.run("health_checker")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Critical issues detected!"
    assert lines[1].startswith("Recommendation: the PNG container is damaged") and "selfheal heal kernel.rts.png" in lines[1]
    assert lines[2:] == ["Entropy: nan", "Anomaly score: nan", "Confidence: 99.00%"]


def test_missing_image_still_has_every_metric_the_guide_reads(guide_dir) -> None:
    (guide_dir.cwd / "kernel.rts.png").unlink()
    proc = guide_dir.run("health_checker")
    assert proc.returncode == 0, proc.stderr  # no KeyError: mean_entropy and anomaly_score are there (NaN)
    assert proc.stdout.splitlines() == ["Entropy: nan", "Anomaly score: nan", "Confidence: 0.00%"]
