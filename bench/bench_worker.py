"""Worker benchmark (issue 15): registering and checking a fleet of small images, against the hashing floor.

Images: N PixelRTS images with 4 KiB payloads (N = 10,000; SELFHEAL_BENCH_QUICK=1: 1,000) and a few with
16 MiB payloads (zlib level 0), in a fresh SELFHEAL_HOME with SQLite.

Rows:
  worker register N images (s), images/s   one `selfheal register DIR` process (start-up included)
  worker register 10,000 images (s)        the same, scaled to 10,000 images (target ≤ 60 s)
  worker first cycle (s), images/s         the batched cycle on never-checked images (full analysis)
  worker first unchanged cycle (s)         the batched cycle again: hash every file, count the unchanged
                                           ones (this first time creating their check_summaries rows)
  worker unchanged cycle (s), images/s     and three more times: the steady state of every later interval (median)
  worker unchanged cycle / hashlib floor   that cycle ÷ one `python -c` process hashing the same files
                                           with hashlib, start-up included (target ≤ 3)
  worker --once unchanged / hashlib floor  a whole `selfheal worker --once` process (start-up, schema
                                           check, requests, quarantine prune) ÷ the same floor
  worker hash time / sha256sum             our hashing over all files vs `sha256sum` (≤ 1.25)
  validate / import cv2                    `selfheal validate` of a small image ÷ `python -c "import cv2"`,
                                           best of 5 each (target ≤ 1.5)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import print_rows, scratch_home  # noqa: E402

QUICK = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
SMALL, SMALL_BYTES = (1000 if QUICK else 10_000), 4096
LARGE, LARGE_BYTES = (2 if QUICK else 10), 16 << 20
HASH_TARGET = 1.25  # our time / sha256sum time; the target is a throughput ratio ≥ 0.8
CYCLE_TARGET = 3.0  # unchanged cycle ÷ a hashlib process over the same files (issue 15)
REGISTER_TARGET_S = 60.0  # 10,000 small images in one `register` call
VALIDATE_TARGET = 1.5  # `selfheal validate` ÷ `python -c "import cv2"`

FLOOR = """
import hashlib, os, sys
for name in sorted(os.listdir(sys.argv[1])):
    if name.endswith(".rts.png"):
        with open(os.path.join(sys.argv[1], name), "rb") as fh:
            hashlib.file_digest(fh, "sha256").hexdigest()
"""


def _make_images(folder: Path) -> list[Path]:
    from healing.pixelrts import write_image

    paths = []
    for i in range(SMALL):
        path = folder / f"small-{i:05d}.rts.png"
        write_image(os.urandom(SMALL_BYTES), path)
        paths.append(path)
    for i in range(LARGE):
        path = folder / f"large-{i:02d}.rts.png"
        write_image(os.urandom(LARGE_BYTES), path, compression_level=0)
        paths.append(path)
    return paths


def _run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _best(argv: list[str], env: dict[str, str], runs: int = 5) -> float:
    return min(_run(argv, env) for _ in range(runs))


def _hash_times(paths: list[Path]) -> tuple[float, float]:
    from healing.images.golden import sha256_file

    def ours() -> None:
        for path in paths:
            sha256_file(path)

    def coreutils() -> None:
        # One sha256sum process per 500 files, like xargs would do, so process start-up is amortised.
        for i in range(0, len(paths), 500):
            subprocess.run(["sha256sum", *map(str, paths[i:i + 500])], check=True, stdout=subprocess.DEVNULL)

    ours()  # warm the page cache for both
    best_ours = best_core = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        ours()
        best_ours = min(best_ours, time.perf_counter() - start)
        start = time.perf_counter()
        coreutils()
        best_core = min(best_core, time.perf_counter() - start)
    return best_ours, best_core


def main() -> list[tuple[str, float, float | None]]:
    with scratch_home("selfheal-bench-worker-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        selfheal = [sys.executable, "-m", "healing"]
        from healing.config import load_settings
        from healing.worker import Worker

        images = tmp / "images"
        images.mkdir()
        print(f"== worker: {SMALL} images of {SMALL_BYTES} B + {LARGE} of {LARGE_BYTES >> 20} MiB payload"
              + (" (SELFHEAL_BENCH_QUICK=1)" if QUICK else "") + " ==")
        paths = _make_images(images)
        n = len(paths)
        total_bytes = sum(p.stat().st_size for p in paths)
        t_register = _run([*selfheal, "register", str(images)], env)

        settings = load_settings()
        worker = Worker(settings)
        worker.prepare()
        start = time.perf_counter()
        first, _ = worker.check_cycle(due_only=False)
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        second, _ = worker.check_cycle(due_only=False)
        t_second_first = time.perf_counter() - start  # creates each image's check_summaries row
        steady = []
        for _ in range(3):  # steady state: what every later interval costs (median of 3)
            start = time.perf_counter()
            second, _ = worker.check_cycle(due_only=False)
            steady.append(time.perf_counter() - start)
        t_second = sorted(steady)[1]
        assert len(first) == len(second) == n and sum(r.reused for r in second) == n, (len(first), len(second))

        t_floor = _best([sys.executable, "-c", FLOOR, str(images)], env, runs=3)
        t_once = _best([*selfheal, "worker", "--once"], env, runs=1)
        t_ours, t_core = _hash_times(paths)

        probe = images / "small-00000.rts.png"
        t_validate = _best([*selfheal, "validate", str(probe)], env)
        t_cv2 = _best([sys.executable, "-c", "import cv2"], env)
        rows = [
            (f"worker register {n} images (s)", t_register, None),
            ("worker register images/s", n / t_register, None),
            ("worker register 10,000 images (s)", t_register * 10_000 / n, REGISTER_TARGET_S),
            ("worker first cycle (s)", t_first, None),
            ("worker first cycle images/s", n / t_first, None),
            ("worker first unchanged cycle (s)", t_second_first, None),
            ("worker unchanged cycle (s)", t_second, None),
            ("worker unchanged cycle images/s", n / t_second, None),
            ("worker unchanged cycle / hashlib floor", t_second / t_floor, CYCLE_TARGET),
            ("worker --once unchanged / hashlib floor", t_once / t_floor, None),
            ("worker hash time / sha256sum", t_ours / t_core, HASH_TARGET),
            ("validate / import cv2", t_validate / t_cv2, VALIDATE_TARGET),
        ]
        print(f"files: {n}, {total_bytes / (1 << 20):.1f} MiB; hashlib floor {t_floor:.2f} s (process, start-up included); "
              f"worker --once {t_once:.2f} s; validate {t_validate * 1000:.0f} ms, import cv2 {t_cv2 * 1000:.0f} ms; "
              f"hashing: ours {total_bytes / t_ours / (1 << 20):.0f} MiB/s, sha256sum {total_bytes / t_core / (1 << 20):.0f} MiB/s")
        print_rows(rows)
        return rows


if __name__ == "__main__":
    main()
