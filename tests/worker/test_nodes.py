"""Many hosts, one PostgreSQL: three `selfheal worker --node NAME` processes on one real PostgreSQL
database (the suite's throwaway server; skipped where none can be had), and SQLite's one worker."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from healing.pixelrts import write_image
from storage.engine import dispose_engines, get_engine, session_scope
from storage.leader import current_leader
from storage.migrate import upgrade
from tests.conftest import selfheal_cmd, subprocess_env
from tests.worker._procs import start_worker, stop_worker, tracebacks, wait_for, write_config

NODES = ("a", "b", "c")
IMAGES_PER_NODE = 3
INTERVAL_S = 2  # every image's check interval
GLOBAL_S = 3  # the tuning cycle's and retention's interval: one run per 3 s period, on the leader
GLOBAL_LINE = re.compile(r"global job (\S+) slot (\d+) on node (\S+)")


def _cli(home: Path, config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, timeout=120,
                          env=subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_CONFIG=str(config), **env))


def _sql(url: str, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    with get_engine(url).connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(statement), params)]


def _leader(url: str) -> str | None:
    with session_scope(url, write=False) as session:
        return current_leader(session)


def _beats(url: str) -> dict[str, dict[str, Any]]:
    """worker_id → its heartbeat row (node, state, info)."""
    with get_engine(url).connect() as conn:
        rows = conn.execute(sa.text("SELECT worker_id, node, state, info FROM worker_heartbeats")).mappings().all()
    return {r["worker_id"]: dict(r) for r in rows}


@pytest.mark.slow
def test_three_nodes_share_one_postgresql(tmp_path: Path, postgres_server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url = postgres_server.fresh_database()
    upgrade(url)
    config = write_config(tmp_path / "fleet.yaml", worker={"leader_interval": 0.5},
                          extra=f"tuning:\n  interval_s: {GLOBAL_S}\nstorage:\n  retention:\n    interval_s: {GLOBAL_S}\n")
    homes = {node: tmp_path / f"home-{node}" for node in NODES}
    # One database, one audit chain: every node signs with the same audit key (docs/fleet.md).
    env = {"SELFHEAL_DATABASE_URL": url, "SELFHEAL_AUDIT_KEY_FILE": str(tmp_path / "audit.key")}
    monkeypatch.setenv("SELFHEAL_AUDIT_KEY_FILE", env["SELFHEAL_AUDIT_KEY_FILE"])  # this process enqueues requests
    for n, node in enumerate(NODES):  # each node registers its own files, with its own golden store
        folder = tmp_path / "imgs" / node
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_NODE):
            write_image(bytes((k * 7 + i + 31 * n) % 251 for k in range(6000)), folder / f"{node}{i}.rts.png")
        out = _cli(homes[node], config, env, "register", "--node", node, "--interval", str(INTERVAL_S), str(folder))
        assert out.returncode == 0, out.stderr
        # Images for the requests below: checked once at the start, then only on request (a request that
        # meets the scheduled check of its image still running is refused as busy, by design).
        write_image(bytes((k * 3 + n) % 251 for k in range(6000)), tmp_path / "imgs" / f"{node}-requested.rts.png")
        out = _cli(homes[node], config, env, "register", "--node", node, "--interval", "3600",
                   str(tmp_path / "imgs" / f"{node}-requested.rts.png"))
        assert out.returncode == 0, out.stderr
    owner = dict(_sql(url, "SELECT id, node FROM images"))
    requested = {image_id for image_id, path in _sql(url, "SELECT id, path FROM images") if path.endswith("-requested.rts.png")}
    assert Counter(owner.values()) == {node: IMAGES_PER_NODE + 1 for node in NODES}
    assert all(list((homes[node] / "golden").rglob("*.png")) for node in NODES)  # golden copies per home

    logs = {node: tmp_path / f"worker-{node}.log" for node in NODES}
    procs = {node: start_worker(homes[node], config, logs[node], "--node", node, **env) for node in NODES}
    restarted: subprocess.Popen[bytes] | None = None
    try:
        assert wait_for(lambda: _leader(url) in NODES and len(_sql(url, "SELECT DISTINCT image_id FROM checks")) == len(owner), 60)
        up_at = time.time()
        time.sleep(3 * INTERVAL_S)

        # kill -9 of the leader: another node leads within 30 s (the dead session's lock is freed at once).
        first = _leader(url)
        assert first is not None
        killed_at, kill_wall = time.monotonic(), time.time()
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(10)
        successor = wait_for(lambda: (leader := _leader(url)) not in (None, first) and leader, 30, interval=0.02)
        takeover_s = time.monotonic() - killed_at
        print(f"leader {first} killed; {successor} leads after {takeover_s:.2f} s")
        assert successor in NODES and takeover_s < 30
        time.sleep(2 * GLOBAL_S)
        # The killed node comes back (same home, same node): a dead worker of this host is no lock.
        restarted = start_worker(homes[first], config, logs[first], "--node", first, **env)
        assert wait_for(lambda: any(b["node"] == first and b["state"] == "running" and b["worker_id"].endswith(f":{restarted.pid}")
                                    for b in _beats(url).values()), 60)

        # Many requests at once: each runs once, on the node that owns its image (tune: the leader).
        with session_scope(url) as session:
            from storage import queries
            paths = {image_id: path for image_id, path in _sql(url, "SELECT id, path FROM images") if image_id in requested}
            request_node = {}
            for _round in range(10):
                for image_id, path in paths.items():
                    request_node[queries.enqueue_request(session, "check", path, requested_by="op")["id"]] = owner[image_id]
            for _ in range(3):
                request_node[queries.enqueue_request(session, "tune", "vllm", requested_by="op")["id"]] = "leader"
        assert wait_for(lambda: _sql(url, "SELECT count(*) FROM run_requests WHERE status IN ('pending', 'running')")
                        == [(0,)], 60)
        time.sleep(GLOBAL_S)
    finally:
        down_at = time.time()
        for proc in [*procs.values(), *([restarted] if restarted else [])]:
            if proc.poll() is None:
                stop_worker(proc)
        dispose_engines()

    assert sum(tracebacks(log) for log in logs.values()) == 0
    beats = _beats(url)
    node_of_worker = {worker_id: beat["node"] for worker_id, beat in beats.items()}
    assert sorted(node_of_worker.values()) == sorted([*NODES, first])

    # Requests: all done, each finished once, each claimed by a worker of its image's node.
    finished = Counter(json.loads(payload)["request_id"]
                       for (payload,) in _sql(url, "SELECT payload FROM audit_events WHERE kind = 'request.finished'"))
    rows = _sql(url, "SELECT id, kind, status, claimed_by FROM run_requests")
    assert len(rows) == len(request_node) == 10 * len(NODES) + 3
    for request_id, kind, status, claimed_by in rows:
        assert finished[request_id] == 1
        if kind == "check":
            assert (status, node_of_worker[claimed_by]) == ("done", request_node[request_id])
    done_checks = Counter(request_node[r] for r, kind, _s, _c in rows if kind == "check")

    # Scheduled checks: every image checked by its own node only. A worker counts its checks in its
    # heartbeat (the last one written at its clean stop): for the two nodes never killed, their
    # images' checks are exactly their workers' counts plus their check requests. A check is a row, or
    # an unchanged check counted in check_summaries instead (storage.retention; sampled ones are rows).
    per_image = Counter(image_id for (image_id,) in _sql(url, "SELECT image_id FROM checks"))
    summarised = {image_id: unchanged - sampled for image_id, unchanged, sampled
                  in _sql(url, "SELECT image_id, unchanged_checks, sampled_checks FROM check_summaries")}
    per_image.update(summarised)
    rows_per_node = Counter()
    for image_id, count in per_image.items():
        rows_per_node[owner[image_id]] += count
    counted = Counter()
    for beat in beats.values():
        counted[beat["node"]] += int((beat["info"] or {}).get("checks", 0))
    for node in NODES:
        if node != first:
            assert rows_per_node[node] == counted[node] + done_checks[node], node
        assert rows_per_node[node] >= counted[node] + done_checks[node]
    # ... and in every cycle: no gap between two checks of an image longer than a few intervals while
    # its node ran (the killed node's images wait for its restart).
    times: dict[int, list[float]] = defaultdict(list)
    for image_id, at in _sql(url, "SELECT image_id, created_at FROM checks ORDER BY created_at"):
        times[image_id].append(at.timestamp())
    for image_id in owner:
        if image_id not in requested and owner[image_id] != first:
            assert per_image[image_id] >= (down_at - up_at) / (2 * INTERVAL_S), (image_id, per_image[image_id])
    for image_id, stamps in times.items():
        if image_id in requested or summarised.get(image_id):
            continue  # summarised checks leave no row per cycle: the count above stands for them
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)
                if owner[image_id] != first or b < kill_wall]
        assert max(gaps) <= 4 * INTERVAL_S, (owner[image_id], image_id, gaps)

    # Global jobs: each period of each job ran exactly once in the fleet, across the takeover.
    runs: dict[str, Counter[int]] = defaultdict(Counter)
    by_node: Counter[str] = Counter()
    for log in logs.values():
        for job, slot, node in GLOBAL_LINE.findall(log.read_text(errors="replace")):
            runs[job][int(slot)] += 1
            by_node[node] += 1
    assert {"tuning", "retention"} <= runs.keys()
    for job, slots in runs.items():
        assert [s for s, n in slots.items() if n > 1] == [], job  # 0 duplicates
    kill_slot = int(kill_wall // GLOBAL_S)
    for job in ("tuning", "retention"):
        slots = runs[job]
        window = range(kill_slot - 1, max(slots))
        assert [s for s in window if s not in slots] == [], job  # 0 missed, before, during and after the takeover
    assert by_node[first] > 0 and by_node[successor] > 0
