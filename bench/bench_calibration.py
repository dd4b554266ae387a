"""Calibration of the statistics that decide when no hash can (issue 14): the confusion table.

Builds the corpus of tests/analysis/corpus.py from this machine's files — executables, libraries,
compressed archives, text, WASM, sparse files; 30 of each (15 WASM), 15 of them 1–16 MiB — writes
each one as a PixelRTS image stripped to a plain PNG (no metadata, no sidecar, no baseline) and runs
the real `check` path on it, then on two damaged variants of each 1–16 MiB sample (a 64 KiB range
zeroed, a 64 KiB range of noise). Prints, for the calibration half, the held-out half and both, the
confusion table (clean/damaged × healthy/warning/critical) after and before (the entropy z-score
rule the issue reported), detection per category, and how often the first "likely place" hint
overlaps the damage, per detector kind (hints are drawn only for kinds at ≥ 80 %).

Targets (held-out half): false critical ≤ 1 % of clean images, detection ≥ 90 % of damaged ones.
SELFHEAL_BENCH_QUICK=1 uses 10 samples per category of at most 4 MiB.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from healing.analysis import VLMHealthChecker  # noqa: E402
from healing.config import load_settings  # noqa: E402
from tests.analysis.corpus import (  # noqa: E402
    CATEGORIES,
    Outcome,
    build_corpus,
    evaluate,
    format_table,
    hint_overlap,
    rates,
)

TARGETS = {"false_critical": 1.0, "missed": 10.0}


def _per_category(outcomes: list[Outcome]) -> list[str]:
    lines = [f"  {'category':<12}{'clean':>7}{'false warn':>12}{'false crit':>12}{'damaged':>9}{'detected':>10}"]
    for category in CATEGORIES:
        mine = [o for o in outcomes if o.category == category]
        clean = [o for o in mine if o.row == "clean"]
        damaged = [o for o in mine if o.row != "clean"]
        lines.append(f"  {category:<12}{len(clean):>7}{sum(o.status == 'warning' for o in clean):>12}"
                     f"{sum(o.status == 'critical' for o in clean):>12}{len(damaged):>9}"
                     f"{sum(o.status != 'healthy' for o in damaged):>10}")
    return lines


def main() -> list[tuple[str, float, float | None]]:
    quick = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
    per, big, largest = (10, 5, 4 << 20) if quick else (30, 15, 16 << 20)
    print("== statistics without a hash: calibration corpus" + (" (SELFHEAL_BENCH_QUICK=1)" if quick else "") + " ==")
    started = time.perf_counter()
    samples = build_corpus(per, big, max_size=largest)
    checker = VLMHealthChecker(load_settings())
    with tempfile.TemporaryDirectory(prefix="selfheal-calibration-") as tmp:
        outcomes = evaluate(checker, samples, Path(tmp))
    elapsed = time.perf_counter() - started
    halves = {"calibration half": [o for o in outcomes if o.half == "calibration"],
              "held-out half": [o for o in outcomes if o.half == "held-out"], "whole corpus": outcomes}
    for title, part in halves.items():
        print(format_table(part, f"after, {title}"))
        print(format_table(part, f"before (entropy z-score rule), {title}", before=True))
    print("per category, whole corpus (after):")
    print("\n".join(_per_category(outcomes)))
    for title, part in halves.items():
        overlap = hint_overlap(part)
        text = ", ".join(f"{kind} {hit}/{total} ({100 * hit / max(1, total):.0f} %)" for kind, (hit, total) in overlap.items())
        drawn_on_clean = sum(len(o.hints) for o in part if o.row == "clean")
        print(f"first likely-place hint overlaps the damage, {title}: {text or 'no hints'}; "
              f"hints drawn on clean images: {drawn_on_clean}")
    checks = [o.seconds for o in outcomes]
    print(f"{len(outcomes)} checks in {elapsed:.0f} s (check alone: mean {1000 * sum(checks) / len(checks):.0f} ms)")
    held = rates(halves["held-out half"])
    return [
        ("calibration: false critical % (held-out)", held["false_critical"], TARGETS["false_critical"]),
        ("calibration: missed damage % (held-out)", 100.0 - held["detection"], TARGETS["missed"]),
    ]


if __name__ == "__main__":
    main()
