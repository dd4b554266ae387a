"""Guide snippet "Slow health checks": prepare_for_vision_model(max_size=256) on a 512x512 image."""

from __future__ import annotations


def test_prepared_picture_is_256_on_a_side(guide_dir) -> None:
    proc = guide_dir.run("slow_checks")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["(256, 256, 3) uint8 True"]
