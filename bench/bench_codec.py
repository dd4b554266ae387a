"""Codec benchmark: encode/decode time against plain OpenCV PNG encode/decode of the same pixels,
the 4096² Hilbert table, peak memory of a 64 MiB decode, and `selfheal --help` start-up time.

Every ratio compares two timings taken in this one run on this machine (best of N repetitions).
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

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import healing.pixelrts._hilbert as _hilbert  # noqa: E402
from healing.pixelrts import EncodedImage, decode, encode  # noqa: E402

LEVEL = 6
TARGETS = {"decode": 1.5, "encode": 1.3, "hilbert": 0.3, "memory": 4.0}


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_pair(ours, reference, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` times of two functions timed alternately, so both see the same machine load."""
    t_ours, t_ref = [], []
    for _ in range(repeat):
        for fn, times in ((ours, t_ours), (reference, t_ref)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(t_ours), min(t_ref)


def peak_decode_memory(path: Path) -> tuple[float, float]:
    """Extra peak RSS (MiB) of decoding ``path`` in a fresh process, measured after imports.

    Everything the decode allocates counts, including the 64 MiB Hilbert table it builds and caches."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from healing.pixelrts import decode, linear_table
import cv2, numpy

def hwm():  # peak resident set of this process in KiB (VmHWM resets at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm()
data = decode({str(path)!r})
peak = hwm()
print(base / 1024, peak / 1024, len(data))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    base, peak, _ = float(out[0]), float(out[1]), int(out[2])
    return peak - base, base


def _bench_size(mib: int, tmp: Path) -> list[tuple[str, float, float | None]]:
    rows: list[tuple[str, float, float | None]] = []
    data = np.random.default_rng(mib).integers(0, 256, mib << 20, dtype=np.uint8).tobytes()
    repeat = 3 if mib < 64 else 2
    results: list[EncodedImage] = []
    t_enc = best(lambda: results.append(encode(data, compression_level=LEVEL)), repeat)
    encoded = results[-1]
    path = tmp / f"p{mib}.rts.png"
    path.write_bytes(encoded.png)
    n = encoded.metadata["grid_size"]
    bgra = cv2.imdecode(np.frombuffer(encoded.png, np.uint8), cv2.IMREAD_UNCHANGED)
    results.clear()
    del encoded
    t_cv_enc = best(lambda: cv2.imencode(".png", bgra, [cv2.IMWRITE_PNG_COMPRESSION, LEVEL]), repeat)
    # Decodes are short (milliseconds at 1 MiB): more repeats, alternating with the reference.
    t_dec, t_cv_dec = best_pair(lambda: decode(path, use_sidecar=False),
                                lambda: cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED),
                                {1: 30, 16: 8}.get(mib, 3))
    print(f"{mib:>3} MiB ({n}²): encode {t_enc:.3f} s = {t_enc / t_cv_enc:.2f}× OpenCV encode ({t_cv_enc:.3f} s) "
          f"[target ≤ {TARGETS['encode']}]; decode {t_dec:.3f} s = {t_dec / t_cv_dec:.2f}× OpenCV decode "
          f"({t_cv_dec:.3f} s, file read included in both) [target ≤ {TARGETS['decode']}]")
    rows.append((f"encode_ratio_{mib}MiB", t_enc / t_cv_enc, TARGETS["encode"]))
    rows.append((f"decode_ratio_{mib}MiB", t_dec / t_cv_dec, TARGETS["decode"]))
    if mib == 64:
        extra, base = peak_decode_memory(path)
        print(f" 64 MiB decode peak memory: {extra:.0f} MiB above a {base:.0f} MiB baseline = "
              f"{extra / 64:.2f}× the payload [target ≤ {TARGETS['memory']}]")
        rows.append(("decode_peak_memory_x_payload", extra / 64, TARGETS["memory"]))
    return rows


def main() -> list[tuple[str, float, float | None]]:
    rows: list[tuple[str, float, float | None]] = []
    print("== PixelRTS codec (ratios measured in this run; lower is better) ==")
    _hilbert._cache.clear()
    t_table = best(lambda: _hilbert.build_linear_table(4096), 3)
    print(f"Hilbert table 4096²: {t_table:.3f} s (target ≤ {TARGETS['hilbert']} s)")
    rows.append(("hilbert_4096_s", t_table, TARGETS["hilbert"]))

    with tempfile.TemporaryDirectory() as tmp:
        for mib in (1, 16, 64):
            rows.extend(_bench_size(mib, Path(tmp)))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # As on a user's machine: compiled modules are cached (some sandboxes set PYTHONDONTWRITEBYTECODE,
    # which makes every start recompile whatever changed since the cache was written).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "healing", "--help"], capture_output=True, env=env, check=True)
    t_help = best(lambda: subprocess.run([sys.executable, "-m", "healing", "--help"], capture_output=True, env=env, check=True), 5)
    t_py = best(lambda: subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True), 5)
    print(f"selfheal --help: {t_help * 1000:.0f} ms (bare Python start-up {t_py * 1000:.0f} ms, ratio {t_help / t_py:.1f}×)")
    rows.append(("help_ms", t_help * 1000, None))
    return rows


if __name__ == "__main__":
    main()
