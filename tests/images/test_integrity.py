import hashlib
from types import SimpleNamespace

import numpy as np

from healing.images.integrity import HealthStatus, IntegrityChecker, build_baseline, changed_blocks


def fake_image(stream: np.ndarray, grid: int = 8) -> SimpleNamespace:
    return SimpleNamespace(stream=stream, grid_size=grid, metadata={"data_hash": "abc"})


def test_baseline_block_hashes_and_entropy():
    stream = np.concatenate([np.zeros(256, np.uint8), np.arange(256, dtype=np.uint8), np.full(100, 7, np.uint8)])
    base = build_baseline(fake_image(stream), block_size=256, file_sha256="f" * 64)
    assert base["block_sha256"] == [hashlib.sha256(stream[i:i + 256].tobytes()).hexdigest() for i in (0, 256, 512)]
    assert base["block_entropy"] == [0.0, 8.0, 0.0]
    assert (base["mean_entropy"], base["stream_length"], base["data_hash"]) == (2.6667, 612, "abc")


def test_changed_blocks_are_merged_ranges():
    stream = np.zeros(1024, np.uint8)
    base = build_baseline(fake_image(stream), block_size=128, file_sha256="0" * 64)
    damaged = stream.copy()
    damaged[[5, 130, 600]] = 1  # blocks 0 and 1 touch: one range; block 4 alone
    assert changed_blocks(fake_image(damaged), base) == [(0, 256), (512, 640)]
    assert changed_blocks(fake_image(stream), base) == []


def test_integrity_checker_never_raises_on_bad_input(tmp_path):
    checker = IntegrityChecker()
    missing = checker.check_health(tmp_path / "nope.rts.png")
    assert missing.status is HealthStatus.UNKNOWN and "no such file" in missing.findings[0]["description"]
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    truncated = checker.check_health(tmp_path / "t.png")
    data = truncated.to_dict()
    assert (data["status"], data["confidence"], data["recommendation"]) == ("critical", 0.95, "restore the image from its golden copy")
    assert data["findings"][0]["description"] == "truncated PNG: chunk header at byte 8 is cut off"
