"""The damage suite: each kind of damage gets the right status, category and localised range."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest

from healing.analysis import HealthStatus, VLMHealthChecker
from healing.analysis.baseline import load_baseline
from healing.config import load_settings
from tests.analysis.conftest import random_bytes, replace_text_metadata, rewrite_stream, text_bytes
from tests.conftest import selfheal_cmd, subprocess_env

SIZE = 60_000  # 128² grid (65 536 bytes), 15 data blocks of 4096 bytes


@pytest.fixture()
def checker() -> VLMHealthChecker:
    return VLMHealthChecker(load_settings())


def baseline_of(path: Path, tmp_path: Path) -> dict:
    import subprocess

    out = tmp_path / f"{path.name}.baseline.json"
    proc = subprocess.run([*selfheal_cmd(), "baseline", str(path), "-o", str(out)], capture_output=True, text=True,
                          env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    return load_baseline(out)


def corruption_ranges(result) -> list[tuple[int, int]]:
    return [tuple(f["byte_range"]) for f in result.findings if f["category"] == "corruption" and f["source"] == "baseline"]


def test_result_shape_is_the_check_json_contract(make_rts, checker) -> None:
    result = checker.check_health(make_rts(random_bytes(SIZE)))
    data = result.to_dict()
    assert list(data) == ["image_path", "status", "confidence", "metrics", "findings", "recommendation",
                          "timestamp", "duration_ms"]
    assert data["status"] == "healthy" and data["confidence"] == 0.99 and data["findings"] == []
    assert data["metrics"]["hash_verified"] is True and data["metrics"]["grid_size"] == 128
    assert data["metrics"]["data_size"] == SIZE and data["metrics"]["anomaly_score"] == 0.0
    assert data["timestamp"].endswith("Z") and data["duration_ms"] > 0
    assert result.summary == "healthy: no action required"
    json.dumps(data)


@pytest.mark.parametrize("kind", ["random", "zeros", "text", "machine_code"])
def test_clean_images_stay_healthy(kind: str, make_rts, checker) -> None:
    if kind == "machine_code":
        libdir = Path(sysconfig.get_config_var("LIBDIR") or "/usr/lib")
        candidates = sorted(libdir.glob("libpython3*.so*")) or sorted(Path(np.__file__).parent.glob("**/*.so"))
        data = candidates[0].read_bytes()[:1_500_000]
    else:
        data = {"random": random_bytes(SIZE), "zeros": bytes(SIZE), "text": text_bytes(SIZE)}[kind]
    result = checker.check_health(make_rts(data))
    assert result.status == HealthStatus.HEALTHY, result.findings
    assert result.metrics["hash_verified"] is True
    if kind == "zeros":
        assert result.metrics["mean_entropy"] == 0.0
    if kind == "random":
        assert result.metrics["entropy_bands"]["compressed"] == 1.0


def test_zeroed_range_with_baseline_is_located(make_rts, checker, tmp_path) -> None:
    path = make_rts(random_bytes(SIZE))
    baseline = baseline_of(path, tmp_path)
    rewrite_stream(path, lambda s: s.__setitem__(slice(10_000, 14_000), 0))
    result = checker.check_health(path, baseline=baseline)
    assert result.status == HealthStatus.CRITICAL
    assert corruption_ranges(result) == [(8192, 16384)]  # blocks 2 and 3 merged
    located = [f for f in result.findings if f["source"] == "baseline"][0]
    assert located["region"] == [0, 32, 64, 32]  # curve positions 2048..4095 of a 128² grid
    assert any(f["category"] == "corruption" and f["source"] == "integrity" for f in result.findings)
    assert "[8192, 16384)" in result.recommendation


def test_random_filled_range_without_baseline_offers_likely_places(make_rts, checker) -> None:
    path = make_rts(text_bytes(SIZE))
    rewrite_stream(path, lambda s: s.__setitem__(slice(16_384, 28_672), np.frombuffer(random_bytes(12_288, 5), np.uint8)))
    result = checker.check_health(path)
    assert result.status == HealthStatus.CRITICAL
    likely = [f for f in result.findings if f["source"] == "statistical"]
    assert likely and likely[0]["byte_range"] == [16384, 28672]
    assert "likely place" in likely[0]["description"] and "not confirmed" in likely[0]["description"]
    assert result.metrics["anomaly_score"] >= 0.7  # looks encrypted against text


def test_one_flipped_bit(make_rts, checker, tmp_path) -> None:
    path = make_rts(random_bytes(SIZE))
    baseline = baseline_of(path, tmp_path)
    rewrite_stream(path, lambda s: s.__setitem__(33_333, s[33_333] ^ 0x10))
    result = checker.check_health(path, baseline=baseline)
    assert result.status == HealthStatus.CRITICAL and result.metrics["hash_verified"] is False
    assert corruption_ranges(result) == [(32768, 36864)]
    assert result.metrics["changed_bytes"] == 4096


def test_swapped_bytes_in_two_blocks(make_rts, checker, tmp_path) -> None:
    path = make_rts(random_bytes(SIZE))
    baseline = baseline_of(path, tmp_path)

    def swap(s: np.ndarray) -> None:
        s[100], s[50_000] = s[50_000], s[100]

    rewrite_stream(path, swap)
    result = checker.check_health(path, baseline=baseline)
    assert result.status == HealthStatus.CRITICAL
    assert corruption_ranges(result) == [(0, 4096), (49152, 53248)]


def test_truncated_file_is_critical(make_rts, checker) -> None:
    path = make_rts(random_bytes(SIZE))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    result = checker.check_health(path)
    assert result.status == HealthStatus.CRITICAL
    assert result.findings[0]["category"] == "structural" and result.findings[0]["source"] == "codec"


def test_edited_embedded_metadata_is_critical(make_rts, checker) -> None:
    path = make_rts(random_bytes(SIZE), sidecar=False)
    replace_text_metadata(path, {"data_hash": "0" * 64})
    result = checker.check_health(path)
    assert result.status == HealthStatus.CRITICAL
    assert [f["byte_range"] for f in result.findings if f["category"] == "corruption"] == [[0, SIZE]]


def test_edited_sidecar_is_critical(make_rts, checker) -> None:
    path = make_rts(random_bytes(SIZE))
    sidecar = Path(f"{path}.meta.json")
    meta = json.loads(sidecar.read_text())
    meta["data_hash"] = "f" * 64
    sidecar.write_text(json.dumps(meta))
    result = checker.check_health(path)
    assert result.status == HealthStatus.CRITICAL
    assert {f["category"] for f in result.findings} >= {"corruption", "structural"}  # hash + sidecar mismatch


def test_bytes_in_the_padding(make_rts, checker) -> None:
    path = make_rts(random_bytes(SIZE))
    rewrite_stream(path, lambda s: s.__setitem__(slice(62_000, 62_010), 0xAB))
    result = checker.check_health(path)
    assert result.status == HealthStatus.CRITICAL and result.metrics["hash_verified"] is True
    padding = [f for f in result.findings if "padding" in f["description"]][0]
    assert padding["byte_range"] == [62000, 62010] and padding["category"] == "corruption"
    assert padding["region"] is not None
    assert "padding must be zero" in result.recommendation


def test_different_valid_image_is_a_security_warning(make_rts, checker, tmp_path) -> None:
    path = make_rts(random_bytes(SIZE))
    baseline = baseline_of(path, tmp_path)
    make_rts(random_bytes(SIZE, seed=9), name=path.name)
    result = checker.check_health(path, baseline=baseline)
    assert result.status == HealthStatus.WARNING
    security = [f for f in result.findings if f["category"] == "security"]
    assert len(security) == 1 and security[0]["byte_range"] == [0, 61440]
    assert not any(f["category"] == "corruption" for f in result.findings)


def test_unchanged_image_with_baseline_is_healthy(make_rts, checker, tmp_path) -> None:
    path = make_rts(text_bytes(SIZE))
    result = checker.check_health(path, baseline=baseline_of(path, tmp_path))
    assert result.status == HealthStatus.HEALTHY and result.findings == []


def _plain_png(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_plain_pngs_are_judged_by_statistics(tmp_path, checker) -> None:
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    clean = checker.check_health(_plain_png(tmp_path / "noise.png", noise))
    assert clean.status == HealthStatus.HEALTHY and clean.metrics["hash_verified"] is None
    assert clean.confidence < 1 and clean.metrics["grid_size"] is None
    assert any(f["source"] == "statistical" and "no hash can decide" in f["description"] for f in clean.findings)

    damaged = noise.copy()
    damaged[100:260, 100:420] = 0
    bad = checker.check_health(_plain_png(tmp_path / "damaged.png", damaged))
    assert bad.status == HealthStatus.CRITICAL and bad.confidence <= 0.9
    assert bad.metrics["anomaly_score"] >= 0.9
    regions = [f["region"] for f in bad.findings if f["category"] == "anomaly" and f["region"]]
    assert regions and all(96 <= r[0] and r[0] + r[2] <= 420 + 32 for r in regions)


def test_stripped_metadata_keeps_padding_out_of_the_statistics(make_rts, checker) -> None:
    path = make_rts(random_bytes(SIZE), sidecar=False)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert cv2.imwrite(str(path), image)  # re-encode: the tEXt chunk is gone
    result = checker.check_health(path)
    assert result.metrics["pixelrts"] is False and result.metrics["hash_verified"] is None
    assert result.status == HealthStatus.HEALTHY and result.confidence < 1
    assert result.metrics["outlier_blocks"] == 0


def test_missing_and_non_png_files_are_unknown(tmp_path, checker) -> None:
    assert checker.check_health(tmp_path / "nope.png").status == HealthStatus.UNKNOWN
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    result = checker.check_health(junk)
    assert result.status == HealthStatus.UNKNOWN and result.confidence == 0.0


class _Provider:
    name = "fake-model"

    def __init__(self, status: str) -> None:
        self.status = status

    def analyze(self, context):
        from healing.vision import Finding, ProviderResult

        assert context.overlay is not None and context.grid_size in (None, 128)
        finding = Finding("anomaly", "high", "looks odd to the model", self.name, region=(0, 0, 8, 8))
        return ProviderResult(self.name, True, self.status, 0.8, "odd", [finding])


def test_model_findings_inform_but_never_override_a_verified_hash(make_rts) -> None:
    checker = VLMHealthChecker(load_settings(), providers=[_Provider("critical")])
    result = checker.check_health(make_rts(random_bytes(SIZE)))
    assert result.status == HealthStatus.HEALTHY
    model = [f for f in result.findings if f["source"] == "fake-model"]
    assert model and model[0]["severity"] == "low" and "informational" in model[0]["description"]


def test_model_decides_a_plain_png(tmp_path) -> None:
    checker = VLMHealthChecker(load_settings(), providers=[_Provider("warning")])
    path = _plain_png(tmp_path / "p.png", np.random.default_rng(0).integers(0, 256, (100, 60, 3), dtype=np.uint8))
    result = checker.check_health(path)
    assert result.status == HealthStatus.WARNING and result.confidence == 0.8
    assert any(f["source"] == "fake-model" and f["severity"] == "high" for f in result.findings)
    assert result.metrics["providers"] == ["fake-model"] and result.agreement == 1.0


def test_thresholds_come_from_the_settings(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("health_check:\n  threshold:\n    warning: 0.1\n    critical: 0.2\n")
    noise = np.random.default_rng(2).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    noise[0:40, 0:40] = 0  # a couple of zero tiles: a low score, above these strict thresholds
    path = _plain_png(tmp_path / "n.png", noise)
    default = VLMHealthChecker(load_settings()).check_health(path)
    strict = VLMHealthChecker(load_settings(cfg)).check_health(path)
    assert 0.2 <= default.metrics["anomaly_score"] < 0.7
    assert default.status == HealthStatus.HEALTHY and strict.status == HealthStatus.CRITICAL


def test_downscale_from_the_stream_matches_area_averaging_of_the_pixels(tmp_path) -> None:
    import numpy as np

    from healing.analysis.imaging import downscale
    from healing.analysis.loading import load_image
    from healing.pixelrts import write_image

    data = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "d.rts.png"
    write_image(data, path)
    loaded = load_image(path)
    assert loaded._pixels is None  # the fast path keeps only the stream
    small, scale = loaded.downscaled(128)
    reference, ref_scale = downscale(loaded.pixels, 128)
    assert small.shape == reference.shape == (128, 128, 4) and scale == ref_scale == 4.0
    assert int(np.abs(small.astype(int) - reference.astype(int)).max()) <= 1
