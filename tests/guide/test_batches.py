"""Guide snippet "Memory exhaustion during batch processing": its list ends in ``...`` (Ellipsis)."""

from __future__ import annotations


def test_batches_check_every_image_and_the_ellipsis_is_unknown(guide_dir) -> None:
    proc = guide_dir.run("batches")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['healthy', 'healthy', 'unknown']", "float"]
