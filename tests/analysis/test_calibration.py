"""Statistics where no hash decides (issue 14): plain PNGs and stripped metadata, calibrated on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from healing.analysis import AnomalyModel, HealthStatus, VLMHealthChecker
from healing.analysis.entropy import entropy_map
from healing.analysis.geometry import range_region
from healing.analysis.ranges import NOISE, ZEROS, RangeModel, find_candidates
from healing.config import load_settings
from healing.pixelrts import grid_size_for
from tests.analysis.conftest import random_bytes, text_bytes
from tests.analysis.corpus import (
    ROOT,
    build_corpus,
    build_sparse,
    build_wasm,
    evaluate,
    format_table,
    hint_overlap,
    rates,
    write_plain,
)


@pytest.fixture()
def checker() -> VLMHealthChecker:
    return VLMHealthChecker(load_settings())


def stream_of(data: bytes) -> tuple[np.ndarray, object]:
    """The curve stream a stripped plain PNG of ``data`` yields (data, then zero padding), and its map."""
    n = grid_size_for(len(data))
    stream = np.zeros(4 * n * n, dtype=np.uint8)
    stream[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return stream, entropy_map(stream, n, 4096, exclude_padding=True)


def candidates(data: bytes) -> list[tuple[str, int, int, bool]]:
    stream, emap = stream_of(data)
    return [(c.kind, c.start, c.end, c.critical) for c in find_candidates(stream, emap)]


def structured(size: int) -> bytes:
    """Code-like content: an assembled WebAssembly module (no zero runs, no random-looking blocks)."""
    return build_wasm(size, seed=7)[:size]


# --------------------------------------------------------------------------- the detector, exactly


def test_an_unaligned_zero_run_is_the_only_candidate_and_critical() -> None:
    data = bytearray(structured(1 << 20))
    data[300_001 : 300_001 + 65_536] = bytes(65_536)
    found = candidates(bytes(data))
    assert len(found) == 1
    kind, start, end, critical = found[0]
    assert kind == ZEROS and critical and start <= 300_001 and 365_537 <= end < 365_537 + 64
    assert start > 300_001 - 64  # extended only by the zeros the content itself had beside the range


def test_holes_on_block_boundaries_are_not_damage() -> None:
    data = build_sparse(structured(1 << 20), 2 << 20, "holes")
    assert data.count(bytes(4096)) > 50  # it has holes
    assert candidates(data) == []


def test_two_equal_zero_runs_are_the_file_itself() -> None:
    data = bytearray(structured(1 << 20))
    data[100_001 : 100_001 + 40_000] = bytes(40_000)
    data[600_003 : 600_003 + 40_000] = bytes(40_000)
    assert candidates(bytes(data)) == []
    data[600_003 : 600_003 + 90_000] = bytes(90_000)  # now one run is over twice the other: a warning
    found = candidates(bytes(data))
    assert [(k, c) for k, _, _, c in found] == [(ZEROS, False)]


def test_noise_in_a_structured_file_is_critical_and_block_aligned() -> None:
    data = bytearray(text_bytes(1 << 20))
    data[200_000 : 200_000 + 65_536] = random_bytes(65_536, 3)
    assert candidates(bytes(data)) == [(NOISE, 200_704, 262_144, True)]  # the whole 4 KiB blocks inside the range


def test_noise_in_code_is_only_a_warning() -> None:
    # Programs carry random-looking tables (3 of the 1,033 ELF files of this machine, 48 KiB or more).
    data = bytearray(structured(1 << 20))
    data[200_000 : 200_000 + 65_536] = random_bytes(65_536, 3)
    assert candidates(bytes(data)) == [(NOISE, 200_704, 262_144, False)]


def test_noise_cannot_be_told_apart_in_random_or_compressed_data() -> None:
    data = bytearray(random_bytes(1 << 20, 4))
    data[200_000 : 200_000 + 65_536] = random_bytes(65_536, 5)
    assert candidates(bytes(data)) == []


def test_a_random_section_of_a_mixed_payload_is_not_damage() -> None:
    assert candidates(random_bytes(1 << 20, 1) + text_bytes(1 << 20)) == []
    assert candidates(text_bytes(1 << 20) + random_bytes(400_000, 2)) == []  # 28 % of the data: a section
    assert candidates(text_bytes(1 << 20) + random_bytes(200_000, 2)) == [(NOISE, 1 << 20, 1_245_184, True)]  # 16 %


# --------------------------------------------------------------------------- the cases of issue 14


def _wasm_modules() -> list[bytes]:
    found = sorted(ROOT.glob(".venv/lib/python3*/site-packages/**/*.wasm"))
    return [p.read_bytes() for p in found[:1]] + [build_wasm(600_000, 1)]


def test_clean_wasm_modules_stripped_of_metadata_are_healthy(checker, tmp_path) -> None:
    for i, module in enumerate(_wasm_modules()):
        assert module[:4] == b"\0asm"
        result = checker.check_health(write_plain(module, tmp_path / f"m{i}.png"))
        assert result.metrics["pixelrts"] is False and result.metrics["hash_verified"] is None
        assert result.status == HealthStatus.HEALTHY and result.metrics["anomaly_score"] == 0.0
        assert result.metrics["outlier_blocks"] == 0


@pytest.mark.parametrize("first_random", [True, False])
def test_clean_random_plus_text_payload_stripped_is_healthy(first_random: bool, checker, tmp_path) -> None:
    parts = [random_bytes(1 << 20, 8), text_bytes(1 << 20)]
    data = b"".join(parts if first_random else parts[::-1])
    result = checker.check_health(write_plain(data, tmp_path / "mixed.png"))
    assert result.status == HealthStatus.HEALTHY and result.metrics["anomaly_score"] == 0.0


@pytest.mark.parametrize("content", ["code", "random"])
def test_zeroed_64k_in_a_5mib_image_is_found_with_an_overlapping_hint(content: str, checker, tmp_path) -> None:
    size, start = 5 << 20, 3_000_017
    data = bytearray(structured(size) if content == "code" else random_bytes(size, 6))
    data[start : start + 65_536] = bytes(65_536)
    result = checker.check_health(write_plain(bytes(data), tmp_path / "z.png"))
    assert result.status == HealthStatus.CRITICAL and result.metrics["anomaly_score"] == 0.95
    hint = result.analysis["anomaly"].outliers[0]
    assert hint.kind == ZEROS and hint.byte_range[0] <= start and start + 65_536 <= hint.byte_range[1] <= start + 65_536 + 64
    drawn = [f for f in result.findings if f["source"] == "statistical" and f["region"]]
    grid = result.metrics["grid_size"]
    assert grid == 2048 and drawn[0]["region"] == list(range_region(hint.byte_range, grid))
    damage = range_region((start, start + 65_536), grid)
    x, y, w, h = drawn[0]["region"]
    assert x < damage[0] + damage[2] and damage[0] < x + w and y < damage[1] + damage[3] and damage[1] < y + h


def test_hints_are_not_drawn_for_a_kind_whose_calibration_falls_short(tmp_path) -> None:
    model = AnomalyModel(ranges=RangeModel(zero_hint_overlap=0.6))
    checker = VLMHealthChecker(load_settings(), anomaly_model=model)
    data = bytearray(text_bytes(1 << 20))
    data[400_003 : 400_003 + 65_536] = bytes(65_536)
    result = checker.check_health(write_plain(bytes(data), tmp_path / "w.png"))
    assert result.status == HealthStatus.CRITICAL  # the verdict stands; only the place is not drawn
    assert [f for f in result.findings if f["region"]] == []
    withheld = [f for f in result.findings if "no likely place drawn" in f["description"]]
    assert len(withheld) == 1 and "zeros 60 %" in withheld[0]["description"] and "from 80 %" in withheld[0]["description"]


# --------------------------------------------------------------------------- the corpus


@pytest.mark.slow
def test_corpus_subset_meets_the_targets(checker, tmp_path: Path) -> None:
    samples = build_corpus(5, 2, max_size=2 << 20)
    outcomes = evaluate(checker, samples, tmp_path)
    after, before = rates(outcomes), rates(outcomes, before=True)
    report = format_table(outcomes, "after") + "\n" + format_table(outcomes, "before", before=True)
    assert after["clean"] >= 20 and after["damaged"] >= 10, report
    assert after["false_critical"] == 0.0, report  # ≤ 1 % asked; 0 of this subset
    assert after["false_warning"] <= 10.0, report
    assert after["detection"] >= 90.0, report
    assert before["false_critical"] >= 10.0, report  # the rule issue 14 reported, on the same images
    for kind, (hit, total) in hint_overlap(outcomes).items():
        assert hit >= 0.8 * total, (kind, hit, total)
