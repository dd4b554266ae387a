"""Fleet benchmark (issue 15, "many hosts, one PostgreSQL"): 3 nodes × 3,000 images on one PostgreSQL.

Each node has its own SELFHEAL_HOME (golden store) and registers its own 3,000 PixelRTS images of 4 KiB
payload with `selfheal register --node NAME DIR` (SELFHEAL_BENCH_QUICK=1: 3 × 300). Then the three nodes'
workers run their check cycles at the same time, each in its own process (Worker(node=NAME).check_cycle,
the body of the worker's scheduled checks): first the first cycle (never-checked images, full
analysis), then an unchanged cycle (hash every file, record the reused results: the first one creates
each image's check summary), then a second unchanged cycle ("steady": what every later cycle costs).

PostgreSQL: SELFHEAL_TEST_POSTGRES_URL (a role that may create databases), else a throwaway server
started with initdb as the tests do (tests/pg_server.py); without either the bench says why and skips.

Rows (per cycle = all three nodes' cycles together):
  fleet <cycle> cycle node <X> (s)         the cycle's wall time in node X's process
  fleet <cycle> cycle images/s             all images ÷ the slowest node's cycle time
  fleet <cycle> DB CPU share               PostgreSQL's CPU (the postmaster and every backend, exited ones
                                           through the postmaster's cutime/cstime in /proc) ÷ (that + the
                                           three workers' CPU) over the cycle
  fleet <cycle> rows written               pg_stat_database tup_inserted + tup_updated + tup_deleted
  fleet <cycle> rows per image
  fleet <cycle> DB bytes per image         pg_database_size growth ÷ images
  fleet <cycle> WAL bytes per image        pg_current_wal_lsn() advance ÷ images
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
NODES = ("a", "b", "c")
PER_NODE, PAYLOAD = (300 if QUICK else 3000), 4096

CYCLE = """
import json, sys, time
from healing.config import load_settings
from healing.worker import Worker

worker = Worker(load_settings(), node=sys.argv[1])
worker.prepare()
start, cpu = time.perf_counter(), time.process_time()
records, overruns = worker.check_cycle(due_only=False)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "checked": len(records),
                  "overruns": overruns, "reused": sum(r.reused for r in records)}))
"""


def _server() -> tuple[Any, Any] | str:
    """(server with .fresh_database(), its generator to close) or why there is none."""
    from tests import pg_server

    reason = pg_server.why_unavailable()
    if reason:
        return reason
    gen = pg_server.start_server()
    try:
        return next(gen), gen
    except pg_server.StartFailed as exc:
        return str(exc)


def _ticks(pid: int, *, children: bool) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the command: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
    return int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)


def _postgres_cpu(postmaster: int | None) -> float | None:
    """CPU seconds of the server so far: the postmaster, its reaped children, and its live children."""
    if postmaster is None:
        return None
    try:
        total = _ticks(postmaster, children=True)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    status = (entry / "status").read_text()
                    if f"\nPPid:\t{postmaster}\n" in status:
                        total += _ticks(int(entry.name), children=False)
                except OSError:
                    continue
    except OSError:
        return None
    return total / os.sysconf("SC_CLK_TCK")


def _db_stats(url: str) -> dict[str, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            time.sleep(1.2)  # backends flush their statistics at most once a second
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            rows = conn.exec_driver_sql("SELECT tup_inserted + tup_updated + tup_deleted, pg_database_size(current_database()), "
                                        "pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_database "
                                        "WHERE datname = current_database()").one()
            return {"rows": int(rows[0]), "bytes": int(rows[1]), "wal": int(rows[2])}
    finally:
        engine.dispose()


def _postmaster(url: str) -> int | None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        for line in Path(f"/proc/{backend}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    finally:
        engine.dispose()
    return None


def _cycle(name: str, url: str, envs: dict[str, dict[str, str]], postmaster: int | None) -> tuple[list[tuple[str, float, None]], str]:
    before, cpu_before = _db_stats(url), _postgres_cpu(postmaster)
    procs = {node: subprocess.Popen([sys.executable, "-c", CYCLE, node], env=envs[node], stdout=subprocess.PIPE, text=True)
             for node in NODES}
    results = {}
    for node, proc in procs.items():
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"the cycle of node {node} failed (exit {proc.returncode})")
        results[node] = json.loads(out.strip().splitlines()[-1])
    cpu_after, after = _postgres_cpu(postmaster), _db_stats(url)
    images = len(NODES) * PER_NODE
    assert all(r["checked"] == PER_NODE for r in results.values()), results
    worker_cpu = sum(r["cpu"] for r in results.values())
    pg_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    rows: list[tuple[str, float, None]] = [(f"fleet {name} cycle node {node} (s)", results[node]["seconds"], None) for node in NODES]
    rows.append((f"fleet {name} cycle images/s", images / max(r["seconds"] for r in results.values()), None))
    if pg_cpu is not None:
        rows.append((f"fleet {name} DB CPU share", pg_cpu / (pg_cpu + worker_cpu), None))
    written = after["rows"] - before["rows"]
    rows += [(f"fleet {name} rows written", float(written), None),
             (f"fleet {name} rows per image", written / images, None),
             (f"fleet {name} DB bytes per image", (after["bytes"] - before["bytes"]) / images, None),
             (f"fleet {name} WAL bytes per image", (after["wal"] - before["wal"]) / images, None)]
    note = (f"{name} cycle: workers {worker_cpu:.1f} CPU-s, PostgreSQL "
            + ("n/a" if pg_cpu is None else f"{pg_cpu:.1f} CPU-s") + f", reused {sum(r['reused'] for r in results.values())}"
            + f", overruns {sum(r['overruns'] for r in results.values())}")
    return rows, note


def main() -> list[tuple[str, float, float | None]]:
    print(f"== fleet: {len(NODES)} nodes × {PER_NODE} images of {PAYLOAD} B payload on one PostgreSQL"
          + (" (SELFHEAL_BENCH_QUICK=1)" if QUICK else "") + " ==")
    found = _server()
    if isinstance(found, str):
        print(f"skipped: no PostgreSQL ({found})")
        return []
    server, gen = found
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-bench-fleet-"))
    try:
        from healing.pixelrts import write_image
        from storage.migrate import upgrade

        url = server.fresh_database("selfheal_bench_fleet")
        upgrade(url)
        base = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "SELFHEAL_DATABASE_URL": url, "SELFHEAL_AUDIT_KEY_FILE": str(tmp / "audit.key")}
        base.pop("SELFHEAL_CONFIG", None)
        envs = {node: {**base, "SELFHEAL_HOME": str(tmp / f"home-{node}")} for node in NODES}
        register_s = {}
        for node in NODES:
            folder = tmp / "images" / node
            folder.mkdir(parents=True)
            for i in range(PER_NODE):
                write_image(os.urandom(PAYLOAD), folder / f"{node}-{i:05d}.rts.png")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "healing", "register", "--node", node, str(folder)], env=envs[node],
                           check=True, stdout=subprocess.DEVNULL)
            register_s[node] = time.perf_counter() - start
        postmaster = _postmaster(url)
        rows: list[tuple[str, float, float | None]] = [
            (f"fleet register {PER_NODE} images node {node} (s)", register_s[node], None) for node in NODES]
        notes = []
        for name in ("first", "unchanged", "steady"):
            cycle_rows, note = _cycle(name, url, envs, postmaster)
            rows += cycle_rows
            notes.append(note)
        print("; ".join(notes))
        for metric, value, target in rows:
            print(f"{metric:<44} {value:12.3f}" + ("" if target is None else f"   target ≤ {target}"))
        return rows
    finally:
        from storage.engine import dispose_engines

        dispose_engines()
        gen.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
