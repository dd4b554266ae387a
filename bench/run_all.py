"""`make bench`: run every benchmark module in this folder and print a summary of ratios vs targets."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

MODULES = ["bench_codec", "bench_analysis", "bench_worker", "bench_growth", "bench_dashboard", "bench_observer", "bench_api", "bench_parity",
           "bench_calibration", "bench_tuning", "bench_fleet"]


def main() -> int:
    summary = []
    for name in MODULES:
        module = importlib.import_module(name)
        summary.extend(module.main() or [])
        print()
    print("== summary ==")
    for metric, value, target in summary:
        verdict = "" if target is None else ("  ok" if value <= target else "  ABOVE TARGET")
        print(f"{metric:<40} {value:10.3f}" + ("" if target is None else f"   target ≤ {target}") + verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
