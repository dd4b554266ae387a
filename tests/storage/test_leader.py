"""Leader election (pg_try_advisory_lock on a dedicated connection), per-period claims of the global
jobs, and request claims per node with SELECT … FOR UPDATE SKIP LOCKED — on a real PostgreSQL server
(skipped where none can be had) and on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from storage import queries
from storage.engine import session_scope
from storage.leader import LeaderOnlyScheduler, Leadership, claim_slot, current_leader, job_runs
from storage.nodes import assign_paths, claim_request, list_nodes, use_node
from tests.conftest import subprocess_env
from tests.storage._workers import run_in_processes

T0 = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _host_node():
    yield
    use_node(None)


def test_one_leader_at_a_time_and_the_lead_passes_on_release(pg_url: str) -> None:
    a, b = Leadership("node-a", pg_url), Leadership("node-b", pg_url)
    try:
        assert (a.shared, a.poll(), b.poll()) == (True, True, False)
        assert (a.describe(), b.describe()) == ("leader", "follower")
        assert a.poll() is True and b.poll() is False  # the leader keeps it; the follower keeps trying
        with session_scope(pg_url, write=False) as session:
            assert current_leader(session) == "node-a"
        a.release()
        assert (a.is_leader, b.poll()) == (False, True)
        with session_scope(pg_url, write=False) as session:
            assert current_leader(session) == "node-b"
        assert a.poll() is False
    finally:
        a.release()
        b.release()
    with session_scope(pg_url, write=False) as session:
        assert current_leader(session) is None


HOLDER = """
import sys, time
from storage.leader import Leadership
lead = Leadership("node-dead", sys.argv[1])
print("leader" if lead.poll() else "follower", flush=True)
time.sleep(600)
"""


def test_a_killed_leader_loses_the_lead_at_once(pg_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, pg_url], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    follower = Leadership("node-b", pg_url)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leader"
        assert follower.poll() is False
        with session_scope(pg_url, write=False) as session:
            assert current_leader(session) == "node-dead"
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        while not follower.poll():
            assert time.monotonic() - killed < 30, "no takeover within 30 s"
            time.sleep(0.05)
        takeover = time.monotonic() - killed
        assert takeover < 5  # the kernel closes the socket; the server ends the session and frees the lock
        with session_scope(pg_url, write=False) as session:
            assert current_leader(session) == "node-b"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        follower.release()


def test_sqlite_is_one_worker_that_always_leads(sqlite_url: str) -> None:
    lead = Leadership("solo", sqlite_url)
    assert (lead.shared, lead.is_leader, lead.poll(), lead.describe()) == (False, True, True, "single worker (SQLite)")
    lead.release()
    assert lead.poll() is True
    with session_scope(sqlite_url, write=False) as session:
        assert current_leader(session) is None


def test_a_period_of_a_global_job_is_claimed_once(db_url: str) -> None:
    with session_scope(db_url) as session:
        assert claim_slot(session, "tuning", 100, "node-a", now=T0) is True
        assert claim_slot(session, "tuning", 100, "node-b", now=T0) is False  # same period: already run
        assert claim_slot(session, "tuning", 99, "node-b", now=T0) is False  # an older period never runs late
        assert claim_slot(session, "retention", 100, "node-b", now=T0) is True
        assert claim_slot(session, "tuning", 101, "node-b", now=T0) is True
    with session_scope(db_url, write=False) as session:
        runs = job_runs(session)
    assert [(r["job"], r["slot"], r["node"], r["runs"], r["ran_at"]) for r in runs] == [
        ("retention", 100, "node-b", 1, T0), ("tuning", 101, "node-b", 2, T0)]


class _Scheduler:
    def __init__(self) -> None:
        self.jobs: list[tuple[str, dict]] = []

    def add_job(self, func, trigger, **kwargs):  # noqa: ANN001, ANN201 - APScheduler's shape
        self.jobs.append((trigger, kwargs))
        return kwargs["id"]


def test_leader_only_jobs_run_on_the_leader_once_per_period(pg_url: str) -> None:
    a, b = Leadership("node-a", pg_url), Leadership("node-b", pg_url)
    calls: list[str] = []
    try:
        a.poll()
        b.poll()
        scheduled = _Scheduler()
        on_a = LeaderOnlyScheduler(scheduled, a, "node-a", tick=0.5, url=pg_url)
        on_b = LeaderOnlyScheduler(_Scheduler(), b, "node-b", tick=0.5, url=pg_url)
        assert on_a.add_job(calls.append, "interval", args=["x"], seconds=3600, id="retention", coalesce=True) == "retention"
        trigger, kwargs = scheduled.jobs[0]
        assert (trigger, kwargs["seconds"], kwargs["id"], kwargs["coalesce"], kwargs["args"][:2]) == (
            "interval", 0.5, "retention", True, ["retention", 3600.0])
        assert on_b.run_slot("retention", 3600.0, calls.append, ["b"]) is False  # a follower never runs it
        assert on_a.run_slot("retention", 3600.0, calls.append, ["a"]) is True
        assert on_a.run_slot("retention", 3600.0, calls.append, ["a"]) is False  # the same hour
        a.release()
        assert b.poll() is True
        assert on_b.run_slot("retention", 3600.0, calls.append, ["b"]) is False  # the new leader: this hour is done
        assert calls == ["a"]
        with pytest.raises(ValueError, match="only interval jobs"):
            on_a.add_job(calls.append, "cron", seconds=1, id="x")
    finally:
        a.release()
        b.release()


def _claim_all(url: str, node: str, worker: str) -> list[int]:
    """Claim this node's requests until none is left (one short transaction per claim)."""
    taken = []
    while True:
        with session_scope(url) as session:
            request = claim_request(session, worker, node, leader=node == "node-a")
        if request is None:
            return taken
        assert (request["status"], request["claimed_by"]) == ("running", worker)
        taken.append(request["id"])


@pytest.mark.slow
def test_racing_workers_claim_each_request_once_and_only_their_nodes(pg_url: str) -> None:
    with session_scope(pg_url) as session:
        for n in range(60):
            queries.upsert_image(session, f"/img/{n}.rts.png", actor="test")
        for node, start in (("node-a", 0), ("node-b", 20), ("node-c", 40)):
            assign_paths(session, [f"/img/{n}.rts.png" for n in range(start, start + 20)], node, actor="test")
        requests = {}
        for round_ in range(4):
            for n in range(60):
                row = queries.enqueue_request(session, "check" if round_ % 2 else "heal", f"/img/{n}.rts.png", requested_by="op")
                requests[row["id"]] = f"node-{'abc'[n // 20]}"
        for n in range(10):
            requests[queries.enqueue_request(session, "tune", "vllm", requested_by="op")["id"]] = "node-a"  # the leader's
            requests[queries.enqueue_request(session, "check", f"/nowhere/{n}.png", requested_by="op")["id"]] = "node-a"
    # Two workers per node (as if a node were started twice) and all six released together.
    claimers = [(_claim_all, (pg_url, node, f"{node}:{k}")) for node in ("node-a", "node-b", "node-c") for k in (1, 2)]
    results = run_in_processes(claimers)
    claimed = [request_id for taken in results for request_id in taken]
    assert len(claimed) == len(set(claimed)) == len(requests) == 260
    for (_fn, (_url, node, _worker)), taken in zip(claimers, results, strict=True):
        assert {requests[request_id] for request_id in taken} <= {node}
    with session_scope(pg_url, write=False) as session:
        assert [r["status"] for r in queries.pending_requests(session, limit=1000)] == ["running"] * 260


def test_list_nodes_counts_images_heartbeats_and_the_leader(pg_url: str) -> None:
    use_node("node-a")
    with session_scope(pg_url) as session:
        for n in range(3):
            queries.upsert_image(session, f"/img/{n}.rts.png", actor="test")
        use_node("node-b")
        queries.upsert_image(session, "/img/b.rts.png", actor="test")
        queries.beat_heartbeat(session, "h1:10", pid=10, host="h1", info={"heartbeat_interval": 10})
        from storage.nodes import set_heartbeat_node
        set_heartbeat_node(session, "h1:10", "node-a")
    lead = Leadership("node-a", pg_url)
    try:
        lead.poll()
        with session_scope(pg_url, write=False) as session:
            nodes = list_nodes(session)
    finally:
        lead.release()
    assert [(n["node"], n["images"], n["statuses"], n["running"], n["leader"], (n["heartbeat"] or {}).get("worker_id"))
            for n in nodes] == [("node-a", 3, {"unknown": 3}, True, True, "h1:10"),
                                ("node-b", 1, {"unknown": 1}, False, False, None)]


def test_orphaned_requests_are_closed_and_live_workers_requests_kept(db_url: str) -> None:
    from datetime import timedelta

    from storage.nodes import fail_orphaned_requests, set_heartbeat_node

    with session_scope(db_url) as session:
        for worker, node, beat_at in (("h1:1", "node-a", T0), ("h2:2", "node-b", T0 - timedelta(minutes=10)),
                                      ("h3:3", "node-c", T0), ("h4:4", "node-c", T0)):
            queries.beat_heartbeat(session, worker, pid=int(worker[-1]), host=worker[:2], info={"heartbeat_interval": 10},
                                   now=beat_at)
            set_heartbeat_node(session, worker, node)
        ids = {}
        for claimer in ("h1:1", "h2:2", "h3:3", "h4:4", "gone:9"):
            ids[claimer] = queries.enqueue_request(session, "check", f"/img/{claimer}.png", requested_by="op", now=T0)["id"]
            queries.claim_next_request(session, claimer, now=T0)
    with session_scope(db_url) as session:
        # The leader: h2's beat is 10 minutes old (over 3 intervals + 60 s), gone:9 never beat.
        assert fail_orphaned_requests(session, reason="gone", now=T0 + timedelta(seconds=20)) == 2
    with session_scope(db_url) as session:
        # node-c's new worker h4:4 starting: its node's other worker h3:3 is an earlier incarnation.
        assert fail_orphaned_requests(session, reason="gone", node="node-c", worker_id="h4:4",
                                      now=T0 + timedelta(seconds=20)) == 1
    with session_scope(db_url, write=False) as session:
        status = {r["claimed_by"]: r["status"] for r in queries.pending_requests(session)}
    assert status == {"h1:1": "running", "h4:4": "running"}
