"""Database growth benchmark: what a day of unchanged checks costs, and audit verification times.

Images are registered with a full healthy check (storage.queries) in a fresh SQLite file. Then:
  before   every unchanged check recorded in full, as before issue 15: a check row and a ``check``
           audit event each (storage.queries.record_check), CYCLES_BEFORE cycles of the images, one
           transaction per cycle batch; bytes per check extrapolated to 10,000 images × 288 checks a
           day (the default 300 s interval)
  after    a whole simulated day (288 cycles, 300 s apart) through storage.retention.record_unchanged,
           one call per cycle batch with the default samples_every_s; bytes extrapolated to 10,000
           images (the growth is per image: counters updated in place, a sampled row every 4 h, one
           audit event per sampling batch)
Bytes are the SQLite pages in use (page_count − freelist_count) × page_size after a WAL checkpoint.

  verify   a chain of VERIFY_EVENTS events (storage.audit.append_events); a full verification, then
           VERIFY_NEW more events and an incremental one (resumes after the last verified seq); then 90 %
           of the chain archived into a segment and a full verification (the segment decompressed and
           every event in it re-authenticated)

SELFHEAL_BENCH_QUICK=1: fewer images and events (the per-image figures are the same).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import print_rows, scratch_home  # noqa: E402

QUICK = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
IMAGES = 100 if QUICK else 500
CYCLES_BEFORE = 6 if QUICK else 12
FLEET, CHECKS_PER_DAY, INTERVAL_S = 10_000, 288, 300
VERIFY_EVENTS = 10_000 if QUICK else 100_000
VERIFY_NEW = 1_000
TARGET_MB_PER_DAY = 50.0
BATCH = 500
T0 = datetime(2026, 11, 1, tzinfo=UTC)
METRICS = {"mean_entropy": 7.9464, "min_entropy": 7.9464, "max_entropy": 7.9464, "entropy_std": 0.0,
           "entropy_bands": {"zeros": 0.0, "low": 0.0, "text": 0.0, "code": 0.0, "compressed": 1.0},
           "anomaly_score": 0.0, "outlier_blocks": 0, "data_size": 4096, "grid_size": 32, "hash_verified": True,
           "block_size": 4096, "blocks": 1, "edge_density": 0.03125, "file_size": 4600, "pixelrts": True}


def _used_bytes(url: str) -> int:
    import sqlite3

    from storage.engine import dispose_engines

    dispose_engines()  # pooled connections closed: the checkpoint moves every page into the file
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                             for name in ("page_count", "freelist_count", "page_size"))
    finally:
        conn.close()
    return int((pages - free) * size)


def _result(path: str) -> dict:
    return {"image_path": path, "status": "healthy", "confidence": 0.97, "metrics": METRICS, "findings": [],
            "recommendation": "", "duration_ms": 0.4}


def _fleet(url: str, n: int) -> list[tuple[int, str]]:
    from storage import queries
    from storage.engine import session_scope

    images = []
    with session_scope(url) as s:
        for i in range(n):
            path = f"/srv/images/fleet/node-{i // 100:03d}/image-{i:05d}.rts.png"
            image = queries.upsert_image(s, path, interval_s=INTERVAL_S, golden_sha256="a" * 64, actor="bench", now=T0)
            queries.record_check(s, _result(path), image_id=image["id"], file_size=4600, file_sha256="a" * 64,
                                 file_mtime_ns=1, now=T0)
            images.append((image["id"], path))
    return images


def _before(url: str, images: list[tuple[int, str]]) -> float:
    """Bytes per unchanged check recorded in full."""
    from storage import queries
    from storage.engine import session_scope

    start = _used_bytes(url)
    for cycle in range(1, CYCLES_BEFORE + 1):
        at = T0 + timedelta(seconds=INTERVAL_S * cycle)
        for b in range(0, len(images), BATCH):
            with session_scope(url) as s:
                for image_id, path in images[b:b + BATCH]:
                    queries.record_check(s, _result(path), image_id=image_id, file_size=4600, file_sha256="a" * 64,
                                         file_mtime_ns=1, reused_analysis=True, now=at)
    return (_used_bytes(url) - start) / (CYCLES_BEFORE * len(images))


def _after(url: str, images: list[tuple[int, str]]) -> tuple[float, float]:
    """(bytes per image for one simulated day, seconds per record_unchanged batch call)."""
    from storage.engine import session_scope
    from storage.retention import RetentionSettings, record_unchanged

    every = RetentionSettings().samples_every_s
    ids = [image_id for image_id, _ in images]
    # One warm-up cycle creates the per-image summary rows (once per image, not per day).
    with session_scope(url) as s:
        record_unchanged(s, ids, at=T0 + timedelta(seconds=1), samples_every_s=every)
    start, calls, spent = _used_bytes(url), 0, 0.0
    for cycle in range(1, CHECKS_PER_DAY + 1):
        at = T0 + timedelta(seconds=1 + INTERVAL_S * cycle)
        for b in range(0, len(ids), BATCH):
            began = time.perf_counter()
            with session_scope(url) as s:
                record_unchanged(s, ids[b:b + BATCH], at=at, samples_every_s=every)
            spent += time.perf_counter() - began
            calls += 1
    return (_used_bytes(url) - start) / len(ids), spent / calls


def _verify_times(url: str) -> tuple[float, float, int, float]:
    from storage.archive import archive_events
    from storage.audit import append_events, verify_chain
    from storage.engine import session_scope

    def add(n: int) -> None:
        for b in range(0, n, 5000):
            with session_scope(url) as s:
                append_events(s, [("check", f"/srv/images/image-{i:05d}.rts.png", {"i": i, "status": "healthy"}, "worker")
                                  for i in range(b, min(n, b + 5000))])

    add(VERIFY_EVENTS)
    began = time.perf_counter()
    with session_scope(url, write=False) as s:
        full = verify_chain(s)
    t_full = time.perf_counter() - began
    add(VERIFY_NEW)
    began = time.perf_counter()
    with session_scope(url, write=False) as s:
        incremental = verify_chain(s, incremental=True)
    t_incremental = time.perf_counter() - began
    assert full.ok and incremental.ok and incremental.rows_read == VERIFY_NEW, (full, incremental)
    with session_scope(url) as s:
        archive_events(s, upto_seq=VERIFY_EVENTS * 9 // 10)
    began = time.perf_counter()
    with session_scope(url, write=False) as s:
        archived = verify_chain(s)
    t_archived = time.perf_counter() - began
    assert archived.ok and archived.archived == VERIFY_EVENTS * 9 // 10, archived
    return t_full, t_incremental, incremental.rows_read, t_archived


def main() -> list[tuple[str, float, float | None]]:
    with scratch_home("selfheal-bench-growth-") as tmp:
        from storage.migrate import upgrade

        print(f"== growth: {IMAGES} unchanged images, extrapolated to {FLEET:,} at {INTERVAL_S} s"
              + (" (SELFHEAL_BENCH_QUICK=1)" if QUICK else "") + " ==")
        before_url = f"sqlite:///{tmp / 'before.db'}"
        after_url = f"sqlite:///{tmp / 'after.db'}"
        upgrade(before_url)
        upgrade(after_url)
        per_check = _before(before_url, _fleet(before_url, IMAGES))
        per_image_day, per_call = _after(after_url, _fleet(after_url, IMAGES))
        mb_before = per_check * FLEET * CHECKS_PER_DAY / 1e6
        mb_after = per_image_day * FLEET / 1e6
        verify_url = f"sqlite:///{tmp / 'verify.db'}"
        upgrade(verify_url)
        t_full, t_incremental, read, t_archived = _verify_times(verify_url)
        rows = [
            ("growth before: bytes per check", per_check, None),
            (f"growth before: MB/day {FLEET // 1000}k images", mb_before, None),
            ("growth after: bytes per image-day", per_image_day, None),
            (f"growth after: MB/day {FLEET // 1000}k images", mb_after, TARGET_MB_PER_DAY),
            (f"growth record_unchanged {min(BATCH, IMAGES)} images (ms)", per_call * 1000, None),
            (f"audit verify full {VERIFY_EVENTS // 1000}k events (s)", t_full, None),
            (f"audit verify incremental +{read} (s)", t_incremental, None),
            ("audit verify full, 90 % archived (s)", t_archived, None),
        ]
        print_rows(rows)
        return rows


if __name__ == "__main__":
    main()
