"""Analysis benchmark: a full default `selfheal check` and `selfheal analyze --method all` of a
64 MiB-payload PixelRTS image (4096²), each against a plain OpenCV decode of the same PNG.

All three are measured as whole processes (interpreter start, imports, reading the file) in this one
run on this machine, best of N; peak memory is the child's own VmHWM (peak resident set since its
exec, read at exit), compared with the payload size. Targets: check ≤ 2.5× decode, analyze ≤ 5× decode, check peak ≤ 8× the payload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from healing.pixelrts import write_image  # noqa: E402

PAYLOAD_MIB = 64
REPEAT = 3
TARGETS = {"check": 2.5, "analyze": 5.0, "memory": 8.0}


# Prepended to every child: report VmHWM at exit (ru_maxrss of a forked child would include the
# parent's resident pages at fork time, i.e. this script's 64 MiB test data).
_HWM = ("import atexit, sys\n"
        "def _hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'): sys.stderr.write('HWM ' + line.split()[1] + '\\n')\n"
        "atexit.register(_hwm)\n")


def timed(code: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one child process running ``code``; raises if it fails."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _HWM + code], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child exited {proc.returncode}: {proc.stderr[-400:]}")
    hwm = [line for line in proc.stderr.splitlines() if line.startswith("HWM ")]
    return elapsed, int(hwm[-1].split()[1]) / 1024


def best(code: str) -> tuple[float, float]:
    runs = [timed(code) for _ in range(REPEAT)]
    return min(t for t, _ in runs), max(m for _, m in runs)


def main() -> list[tuple[str, float, float | None]]:
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-") as tmp:
        path = Path(tmp) / "big.rts.png"
        data = np.random.default_rng(PAYLOAD_MIB).integers(0, 256, PAYLOAD_MIB << 20, dtype=np.uint8).tobytes()
        write_image(data, path)
        del data
        cli = "import sys\nfrom healing.cli import main\nrc = main({argv!r})\nsys.exit(0 if rc in (0, 1) else rc)\n"
        t_cv, m_cv = best(f"import cv2\nassert cv2.imread({str(path)!r}, cv2.IMREAD_UNCHANGED) is not None\n")
        t_check, m_check = best(cli.format(argv=["check", str(path)]))
        t_analyze, m_analyze = best(cli.format(argv=["analyze", str(path), "--method", "all",
                                                     "--output", str(Path(tmp) / "analysis.json")]))
    payload = float(PAYLOAD_MIB)
    print(f"analysis benchmark: {PAYLOAD_MIB} MiB payload, 4096² grid, whole processes, best of {REPEAT}")
    print(f"{'process':<34} {'time s':>8} {'ratio':>7} {'peak MiB':>9} {'× payload':>10}")
    for label, t, m in (("OpenCV decode (cv2.imread)", t_cv, m_cv), ("selfheal check", t_check, m_check),
                        ("selfheal analyze --method all", t_analyze, m_analyze)):
        print(f"{label:<34} {t:8.3f} {t / t_cv:7.2f} {m:9.1f} {m / payload:10.2f}")
    return [
        ("analysis: check / OpenCV decode", t_check / t_cv, TARGETS["check"]),
        ("analysis: analyze all / OpenCV decode", t_analyze / t_cv, TARGETS["analyze"]),
        ("analysis: check peak RSS / payload", m_check / payload, TARGETS["memory"]),
    ]


if __name__ == "__main__":
    for metric, value, target in main():
        verdict = "ok" if value <= target else "ABOVE TARGET"
        print(f"{metric:<42} {value:8.3f}   target ≤ {target}  {verdict}")
