"""Dashboard benchmark: server-side render time of every page with 1,000,000 audit events and 10,000 images
(issue 16's fleet; SELFHEAL_BENCH_QUICK=1: 100,000 events and 1,000 images).

A temporary SELFHEAL_HOME gets a database at the current schema, bulk-loaded with a valid audit chain
(1,000,000 events), 10,000 registered images with 20 checks each, 2,000 alerts, tuning runs with candidates
and pending promotions. Each page is then rendered through streamlit.testing AppTest (the script run
on the server, without a browser): the first render (module imports; the audit page starts its background
chain verification) and then the median of REPEAT runs. Target ≤ 1.5 s for both.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
N_EVENTS = 100_000 if QUICK else 1_000_000
N_IMAGES = 1_000 if QUICK else 10_000
CHECKS_PER_IMAGE = 20
N_ALERTS = 2_000
N_RUNS = 30
REPEAT = 3
TARGET_S = 1.5
PASSWORD = "bench-password"
PAGES = ["views/overview.py", "views/images.py", "views/analyze.py", "views/tuning.py",
         "views/promotions.py", "views/audit.py", "views/settings.py"]
KINDS = ("check", "heal", "alert", "image.registered", "request.enqueued")


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def seed(url: str) -> None:
    """Bulk-load the database with executemany (append_event one by one would take minutes)."""
    from storage.audit import GENESIS_HASH, canonical_json, event_hash
    from storage.engine import get_engine
    from storage.migrate import upgrade

    upgrade(url)
    now = datetime.now(UTC)
    t0 = now - timedelta(seconds=N_EVENTS + 3600)
    events, prev = [], GENESIS_HASH
    for i in range(1, N_EVENTS + 1):
        created = t0 + timedelta(seconds=i)
        kind, subject = KINDS[i % len(KINDS)], f"/fleet/img-{i % N_IMAGES:05d}.rts.png"
        payload = canonical_json({"i": i, "status": "healthy"})
        digest = event_hash(i, created, kind, subject, "worker", payload, prev)
        events.append((i, i, _ts(created), kind, subject, "worker", payload, prev, digest))
        prev = digest
    statuses = ("healthy", "warning", "critical", "unknown")
    images = [(i, f"/fleet/img-{i:05d}.rts.png", f"img-{i:05d}", statuses[i % 4], _ts(now), i * CHECKS_PER_IMAGE, _ts(now))
              for i in range(1, N_IMAGES + 1)]
    finding = json.dumps([{"category": "anomaly", "severity": "medium", "description": "entropy spike",
                           "byte_range": [4096, 8192], "region": [0, 0, 16, 16], "source": "statistical"}])
    checks = [((i - 1) * CHECKS_PER_IMAGE + k + 1, i, f"/fleet/img-{i:05d}.rts.png", statuses[i % 4], 0.9,
               json.dumps({"anomaly_score": 0.05 * (k % 10), "mean_entropy": 5 + 0.1 * (k % 7)}),
               finding if i % 4 else "[]", 10.0 + k, _ts(now - timedelta(minutes=5 * (CHECKS_PER_IMAGE - k))))
              for i in range(1, N_IMAGES + 1) for k in range(CHECKS_PER_IMAGE)]
    alerts = [(f"/fleet/img-{i % N_IMAGES:05d}.rts.png", _ts(now - timedelta(seconds=N_ALERTS - i))) for i in range(N_ALERTS)]
    runs = [(r, "vllm", "prod", "succeeded" if r % 3 else "failed", _ts(now - timedelta(hours=2 * r)),
             _ts(now - timedelta(hours=2 * r) + timedelta(minutes=5))) for r in range(1, N_RUNS + 1)]
    candidates = [(r * 3 + c, r, json.dumps({"vllm.gpu_memory_utilization": 0.8 + 0.05 * c}), 1, json.dumps({"ready": True}),
                   0.5 + 0.1 * c, json.dumps({"throughput": 0.3, "latency": 0.2 * c}), _ts(now))
                  for r in range(1, N_RUNS + 1) for c in range(3)]
    promotions = [(p, p, p * 3 + 2, "vllm", json.dumps({"vllm.gpu_memory_utilization": 0.9}),
                   json.dumps({"vllm.gpu_memory_utilization": 0.85}), "pending_review" if p <= 5 else "rejected",
                   _ts(now - timedelta(hours=p)), _ts(now + timedelta(hours=24 - p))) for p in range(1, 21)]
    with get_engine(url).begin() as conn:
        raw = conn.connection.driver_connection
        raw.executemany("INSERT INTO audit_events (id, seq, created_at, kind, subject, actor, payload, prev_hash, hash) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        raw.execute("UPDATE audit_head SET seq = ?, last_event_id = ?, last_hash = ?", (N_EVENTS, N_EVENTS, prev))
        raw.executemany("INSERT INTO images (id, path, name, critical, interval_s, auto_heal_enabled, marked_bad, "
                        "consecutive_heal_failures, last_status, registered_at, updated_at, last_check_id, last_checked_at) "
                        "VALUES (?, ?, ?, 0, 300, 0, 0, 0, ?, ?, ?5, ?, ?)", images)
        raw.executemany("INSERT INTO checks (id, image_id, image_path, status, confidence, metrics, findings, duration_ms, "
                        "reused_analysis, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)", checks)
        raw.executemany("INSERT INTO alerts (kind, severity, subject, message, created_at, acknowledged, webhook_state, "
                        "webhook_attempts) VALUES ('image.critical', 'critical', ?, 'damaged blocks found', ?, 0, 'none', 0)", alerts)
        raw.executemany("INSERT INTO tuning_runs (id, subsystem, mode, status, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?)", runs)
        raw.executemany("INSERT INTO tuning_candidates (id, run_id, params, preflight_ok, canary_gates, score, score_breakdown, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", candidates)
        raw.executemany("INSERT INTO promotions (id, run_id, candidate_id, subsystem, old_values, new_values, status, created_at, "
                        "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", promotions)
        raw.execute("INSERT INTO worker_heartbeats (worker_id, pid, host, started_at, last_beat, state) "
                    "VALUES ('bench', 1, 'bench', ?, ?, 'running')", (_ts(now), _ts(now)))
        raw.execute("ANALYZE")


def _render_times(app_path: Path) -> dict[str, list[float]]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(app_path), default_timeout=120)
    at.run()
    at.text_input[0].set_value("bench")
    at.text_input[1].set_value(PASSWORD)
    at.button[0].click()
    at.run()
    if at.exception:
        raise RuntimeError(f"login failed: {at.exception[0].value}")
    times: dict[str, list[float]] = {}
    for page in PAGES:
        start = time.perf_counter()
        at.switch_page(page).run()  # first render: imports of the page's modules, background chain verify
        first = time.perf_counter() - start
        runs = []
        for _ in range(REPEAT):
            start = time.perf_counter()
            at.run()
            runs.append(time.perf_counter() - start)
            if at.exception:
                raise RuntimeError(f"{page} raised: {at.exception[0].value}")
            if not at.title or at.title[0].value == "selfheal — operator login":
                raise RuntimeError(f"{page} did not render (title {[t.value for t in at.title]})")
        times[page] = [first, *runs]
    return times


def main() -> list[tuple[str, float, float | None]]:
    print(f"== Dashboard pages ({N_EVENTS:,} audit events, {N_IMAGES:,} images × {CHECKS_PER_IMAGE} checks; "
          f"server-side render, median of {REPEAT}) ==")
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-") as tmp:
        os.environ["SELFHEAL_HOME"] = tmp
        os.environ["SELFHEAL_DASHBOARD_PASSWORD"] = PASSWORD
        os.environ.pop("SELFHEAL_DATABASE_URL", None)
        os.environ.pop("SELFHEAL_CONFIG", None)
        from healing.config import load_settings
        from storage.engine import dispose_engines

        start = time.perf_counter()
        seed(load_settings().database_url)
        print(f"seeded in {time.perf_counter() - start:.1f} s")
        from storage.audit import verify_chain
        from storage.engine import session_scope

        start = time.perf_counter()
        with session_scope(write=False) as s:
            assert verify_chain(s).ok
        t_verify = time.perf_counter() - start
        print(f"verify_chain over {N_EVENTS:,} events: {t_verify:.2f} s (runs in the background on the audit page)")
        rows.append((f"dashboard_verify_chain_{N_EVENTS // 1000}k_s", t_verify, None))
        times = _render_times(ROOT / "dashboard" / "app.py")
        for page, (first, *runs) in times.items():
            name = Path(page).stem
            median = statistics.median(runs)
            print(f"{name:<12} median {median:.3f} s  (runs {', '.join(f'{r:.3f}' for r in runs)}; first render "
                  f"{first:.3f} s; target ≤ {TARGET_S} s)")
            rows.append((f"dashboard_{name}_s", median, TARGET_S))
            rows.append((f"dashboard_{name}_first_s", first, TARGET_S))
        # The audit page's background verification (dashboard.chain) must not outlive this benchmark: it
        # would take CPU from the next one (it slowed bench_parity's first patterns 5-10x) and write into
        # a deleted folder.
        for thread in threading.enumerate():
            if thread.name == "audit-verify":
                thread.join()
        dispose_engines()
    return rows


if __name__ == "__main__":
    main()
