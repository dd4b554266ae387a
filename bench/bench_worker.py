"""Worker benchmark: one full check cycle over 1,000 small and 10 large registered images.

Images: 1,000 PixelRTS images with 4 KiB payloads and 10 with 16 MiB payloads (zlib level 0, so each
large file is ~16 MiB on disk), all registered through the real registry into a fresh SQLite database.

Rows:
  worker register N images (s)            registering every image (golden copy, baseline, row, audit)
  worker first cycle (s), images/s        `worker --once` equivalent: hash + full analysis + record
  worker unchanged cycle (s), images/s    the same files again: hash + reused analysis + record
  worker hash time / sha256sum            our hashing (sha256_file, as the check does) over all files,
                                          relative to `sha256sum` over the same files (≤ 1.25 means
                                          throughput ≥ 0.8 of sha256sum). Both read from the page cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL, SMALL_BYTES = 1000, 4096
LARGE, LARGE_BYTES = 10, 16 << 20
HASH_TARGET = 1.25  # our time / sha256sum time; the target is a throughput ratio ≥ 0.8


def _make_images(folder: Path) -> list[Path]:
    from healing.pixelrts import write_image

    paths = []
    for i in range(SMALL):
        path = folder / f"small-{i:04d}.rts.png"
        write_image(os.urandom(SMALL_BYTES), path)
        paths.append(path)
    for i in range(LARGE):
        path = folder / f"large-{i:02d}.rts.png"
        write_image(os.urandom(LARGE_BYTES), path, compression_level=0)
        paths.append(path)
    return paths


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
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-bench-worker-"))
    old_home = os.environ.get("SELFHEAL_HOME")
    os.environ["SELFHEAL_HOME"] = str(tmp / "home")
    try:
        from healing.config import load_settings
        from healing.images.registry import register_image
        from healing.worker import Worker
        from storage.migrate import upgrade

        upgrade()
        settings = load_settings()
        images = tmp / "images"
        images.mkdir()
        print(f"== worker: {SMALL} images of {SMALL_BYTES} B + {LARGE} of {LARGE_BYTES >> 20} MiB payload ==")
        paths = _make_images(images)
        total_bytes = sum(p.stat().st_size for p in paths)
        start = time.perf_counter()
        for path in paths:
            register_image(path, settings=settings, actor="bench")
        t_register = time.perf_counter() - start

        start = time.perf_counter()
        first = Worker(settings).run_once()
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        second = Worker(settings).run_once()
        t_second = time.perf_counter() - start
        assert first["checked"] == second["checked"] == len(paths) and second["reused"] == len(paths), (first, second)

        t_ours, t_core = _hash_times(paths)
        n = len(paths)
        rows = [
            (f"worker register {n} images (s)", t_register, None),
            ("worker first cycle (s)", t_first, None),
            ("worker first cycle images/s", n / t_first, None),
            ("worker unchanged cycle (s)", t_second, None),
            ("worker unchanged cycle images/s", n / t_second, None),
            ("worker hash time / sha256sum", t_ours / t_core, HASH_TARGET),
            ("worker hash throughput vs sha256sum", t_core / t_ours, None),
        ]
        print(f"files: {n}, {total_bytes / (1 << 20):.1f} MiB; hashing: ours {total_bytes / t_ours / (1 << 20):.0f} MiB/s, "
              f"sha256sum {total_bytes / t_core / (1 << 20):.0f} MiB/s")
        for metric, value, target in rows:
            print(f"{metric:<40} {value:10.3f}" + ("" if target is None else f"   target ≤ {target}"))
        return rows
    finally:
        if old_home is None:
            os.environ.pop("SELFHEAL_HOME", None)
        else:
            os.environ["SELFHEAL_HOME"] = old_home
        from storage.engine import dispose_engines

        dispose_engines()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
