"""Guide snippet "Debug Mode": debug=True logs every step; verbose=True puts step timings in the result."""

from __future__ import annotations

import re


def test_debug_logs_each_step_and_verbose_adds_timings(guide_dir) -> None:
    proc = guide_dir.run("debug_mode")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["healthy ['baseline', 'load', 'statistics']"]
    steps = [line for line in proc.stderr.splitlines() if line.startswith("DEBUG:selfheal.checker:")]
    assert steps[0] == "DEBUG:selfheal.checker:check kernel.rts.png: loading (max_pixels 67108864)"
    assert re.fullmatch(r"DEBUG:selfheal\.checker:check kernel\.rts\.png: entropy mean \d\.\d{3} bits/byte over 256 "
                        r"block\(s\), anomaly score 0\.0000, hash verified True", steps[1]), steps[1]
    assert steps[2] == "DEBUG:selfheal.checker:check kernel.rts.png: 0 integrity problem(s); baseline none, 0 changed range(s)"
    assert re.fullmatch(r"DEBUG:selfheal\.checker:check kernel\.rts\.png: healthy \(confidence 0\.99, 0 finding\(s\), "
                        r"[\d.]+ ms\)", steps[3]), steps[3]
    assert len(steps) == 4
