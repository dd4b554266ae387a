"""Analyze page and verdicts (issue 16): a plain photo gets a result with overlays, refusals replace the
previous result and name the dashboard's limits, upload advice has no `selfheal heal`, one-line verdicts."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dashboard.upload import _upload_advice
from dashboard.views.common import verdict_line
from tests.dashboard.conftest import logged_in_app, make_image


def _photo(width: int = 800, height: int = 600) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=2)
    rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _plain(values: Any) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", str(v.value)) for v in values]


def test_a_plain_photo_gets_a_result_with_overlays(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/analyze.py")
    at.file_uploader(key="upload").set_value(("photo.png", _photo(), "image/png")).run()
    assert not at.exception
    assert _plain(at.subheader)[0] == "photo.png: 🟢 healthy"
    verdict = [m for m in _plain(at.markdown) if m.startswith("**Healthy")]
    assert verdict == ["**Healthy: no payload hash to verify; judged by statistics, anomaly score 0.447 "
                       "(warning at 0.7, critical at 0.9)**"]
    assert len(at.get("image")) == 5 and len(at.get("plotly_chart")) == 0
    findings = at.dataframe[0].value
    assert len(findings) == 8 and list(findings["region (x, y, w, h)"])[0] == "0, 0, 32, 32"


def test_refusals_replace_the_previous_result_and_name_the_dashboard_limits(
        seeded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "selfheal.yaml"
    config.write_text("dashboard:\n  max_upload_mb: 2\n  max_upload_pixels: 300000\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    at = logged_in_app("views/analyze.py")
    small = make_image(tmp_path / "ok.rts.png").read_bytes()
    at.file_uploader(key="upload").set_value(("ok.rts.png", small, "image/png")).run()
    assert _plain(at.subheader)[0] == "ok.rts.png: 🟢 healthy"

    at.file_uploader(key="upload").set_value(("photo.png", _photo(), "image/png")).run()  # 480,000 pixels
    assert _plain(at.error) == ["Upload refused: the image is 800×600 = 480,000 pixels; the dashboard analyses at "
                                "most 300,000 pixels (dashboard.max_upload_pixels)"]
    assert _plain(at.subheader) == [] and len(at.get("image")) == 0  # the previous result is gone

    big = small + bytes(2_400_000)
    at.file_uploader(key="upload").set_value(("big.rts.png", big, "image/png")).run()
    assert _plain(at.error) == ["Upload refused: the file is 2.3 MiB; the dashboard analyses at most 2 MiB "
                                "(dashboard.max_upload_mb)."]
    assert _plain(at.subheader) == []


def test_upload_advice_never_says_selfheal_heal() -> None:
    check = {"status": "critical", "recommendation": "restore the image from its golden copy with `selfheal heal`"}
    _upload_advice(check)
    assert check["recommendation"].startswith("an uploaded file has no golden copy here: replace it with a known-good")
    assert "selfheal heal" not in check["recommendation"]
    kept = {"status": "healthy", "recommendation": "no action required"}
    _upload_advice(kept)
    assert kept["recommendation"] == "no action required"


def test_verdict_lines() -> None:
    healthy = {"status": "healthy", "metrics": {"hash_verified": True, "anomaly_score": 0.999}, "findings": []}
    assert verdict_line(healthy) == "Healthy: payload sha256 verified; statistics not used"
    assert verdict_line({**healthy, "reused_analysis": True}) == (
        "Healthy: payload sha256 verified; statistics not used (file unchanged since the last analysis)")
    changed = {"status": "warning", "metrics": {"hash_verified": True},
               "findings": [{"category": "security", "severity": "high", "description": "content changed"}]}
    assert verdict_line(changed) == ("Warning: payload sha256 verifies, but the file differs from its golden copy "
                                     "(an unexpected change: accept it or heal it); statistics not used")
    broken = {"status": "critical", "metrics": {"hash_verified": False},
              "findings": [{"category": "corruption", "severity": "high", "description": "blocks 3-4 differ"}]}
    assert verdict_line(broken) == "Critical: payload sha256 does not match — the data is corrupted; blocks 3-4 differ"
    assert verdict_line({"status": "unknown", "findings": [{"severity": "medium", "description": "unreadable"}]}) == \
        "Unknown: unreadable"
    assert verdict_line(None) == "Not checked yet."


def test_images_page_explains_the_verdict_and_shows_a_status_timeline(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/images.py")
    assert "**Warning: payload sha256 verified; entropy spike in block 3**" in _plain(at.markdown)
    assert len(at.get("plotly_chart")) == 4  # the status timeline, and the three statistics in their expander
    assert [e.label for e in at.expander if e.label.startswith("Statistics")] == [
        "Statistics (not used for this image: its payload sha256 decides)"]
