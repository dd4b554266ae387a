import importlib
import sys
import types

import pytest
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlmodel import select

from healing.config import load_settings
from healing.images.registry import register_image
from healing.worker import CHECK_JOB_PREFIX, Worker, WorkerLock, WorkerLockedError, WorkerSettings
from storage import queries
from storage.engine import session_scope
from storage.models import Image, RunRequest
from storage.nodes import set_heartbeat_node
from tests.images.conftest import flip_idat_byte


def requests_by_id():
    with session_scope(write=False) as session:
        return {r.id: r.model_dump() for r in session.exec(select(RunRequest))}


def enqueue(kind, target):
    with session_scope() as session:
        return queries.enqueue_request(session, kind, target, requested_by="alice")["id"]


def test_run_once_checks_every_image_and_heals_when_auto_heal(settings, make_image, monkeypatch):
    monkeypatch.setenv("VLM_AUTO_HEAL", "true")
    a, b = make_image("a.rts.png"), make_image("b.rts.png")
    good_b = b.read_bytes()
    for path in (a, b):
        register_image(path, settings=settings)
    flip_idat_byte(b)
    summary = Worker(load_settings()).run_once()
    assert summary == {"checked": 2, "healthy": 1, "warning": 0, "critical": 1, "unknown": 0, "healed": 1,
                       "heal_failed": 0, "requests": 0, "reused": 0}
    assert b.read_bytes() == good_b
    again = Worker(load_settings()).run_once()
    assert (again["healthy"], again["reused"]) == (2, 2)


def test_requests_check_heal_accept_change_and_tune(settings, make_image, monkeypatch):
    image = make_image()
    good = image.read_bytes()
    image_id = register_image(image, settings=settings)["image"]["id"]
    flip_idat_byte(image)
    monkeypatch.setattr("healing.worker.TUNING_HOOK", "no_such_tuning_module:process_pending_intents")
    ids = [enqueue("check", str(image)), enqueue("heal", str(image_id)), enqueue("tune", "vllm"),
           enqueue("check", "/nowhere/x.rts.png"), enqueue("heal", "999")]
    worker = Worker(load_settings())
    assert worker.process_requests() == 5
    got = requests_by_id()
    check, heal, tune, adhoc, missing = (got[i] for i in ids)
    assert (check["status"], check["result"]["status"], check["claimed_by"]) == ("done", "critical", worker.worker_id)
    assert (heal["status"], heal["result"]["healthy"], heal["result"]["action"]) == ("done", True, "repair_parity")
    assert image.read_bytes() == good
    assert tune["status"] == "failed"
    assert tune["result"] == {"error": "tuning runner not available: no_such_tuning_module.process_pending_intents cannot be imported"}
    assert (adhoc["status"], adhoc["result"]["status"]) == ("done", "unknown")
    assert (missing["status"], missing["result"]) == ("failed", {"error": "image 999 is not registered"})

    # accept_change: the current (changed, valid) file becomes the golden copy
    from healing.pixelrts import write_image
    write_image(b"new content " * 500, image)
    accept = enqueue("accept_change", str(image))
    worker.process_requests()
    result = requests_by_id()[accept]
    assert result["status"] == "done" and result["result"]["changed"] is True
    with session_scope(write=False) as session:
        from healing.images.golden import sha256_file
        assert queries.get_image(session, image_id=image_id)["golden_sha256"] == sha256_file(image)


def test_tune_request_calls_the_runner_hook(settings, monkeypatch):
    module = types.ModuleType("fake_tuning_runner")
    seen = {}

    def process_pending_intents(settings):
        seen["mode"] = settings.mode
        return {"processed": 2}

    module.process_pending_intents = process_pending_intents
    monkeypatch.setitem(sys.modules, "fake_tuning_runner", module)
    monkeypatch.setattr("healing.worker.TUNING_HOOK", "fake_tuning_runner:process_pending_intents")
    request_id = enqueue("tune", "vllm")
    Worker(load_settings()).process_requests()
    assert requests_by_id()[request_id]["result"] == {"processed": 2} and seen == {"mode": "prod"}


def test_prepare_fails_requests_a_dead_worker_left_running(settings):
    request_id = enqueue("check", "/x")
    with session_scope() as session:
        queries.claim_next_request(session, "dead-worker")
    Worker(load_settings()).prepare()
    row = requests_by_id()[request_id]
    assert (row["status"], row["result"]) == ("failed", {"error": "the worker stopped while running this request"})


def test_config_images_are_registered_relative_to_the_config_file(settings, make_image, tmp_path, monkeypatch):
    image = make_image("cfg.rts.png")
    config = image.parent / "selfheal.yaml"
    config.write_text("monitoring:\n  images:\n    - path: cfg.rts.png\n      critical: true\n      check_interval: 45\n"
                      "    - path: missing.rts.png\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    worker = Worker(load_settings())
    assert worker.sync_config_images() == [str(image)]
    with session_scope(write=False) as session:
        row = queries.get_image(session, path=str(image))
    assert (row["critical"], row["interval_s"]) == (True, 45)
    assert worker.sync_config_images() == []  # already registered; the missing one is retried, logged once
    assert str(image.parent / "missing.rts.png") in worker._register_failures


def test_the_scheduled_cycle_checks_images_when_due_at_their_interval(settings, make_image):
    """One check-cycle job replaces the per-image jobs: each run checks exactly the images due."""
    from datetime import UTC, datetime, timedelta

    from storage.models import Check

    ids = [register_image(make_image(f"{n}.rts.png"), settings=settings, interval_s=60)["image"]["id"] for n in "abc"]
    worker = Worker(load_settings())
    worker.scheduler = BlockingScheduler()
    worker.scheduler.add_job(print, "interval", seconds=60, id=f"{CHECK_JOB_PREFIX}{ids[0]}")  # left by an old version
    worker.sync_jobs()
    assert [j.id for j in worker.scheduler.get_jobs()] == []

    def checks() -> dict[int, int]:
        with session_scope(write=False) as session:
            found = [c.image_id for c in session.exec(select(Check))]
        return {i: found.count(i) for i in ids}

    worker.run_cycle()
    assert checks() == {ids[0]: 1, ids[1]: 1, ids[2]: 1}  # never checked: all due
    worker.run_cycle()
    assert checks() == {ids[0]: 1, ids[1]: 1, ids[2]: 1}  # checked a moment ago, interval 60 s: none due
    with session_scope() as session:  # image b's last check is now 61 s old
        image = session.get(Image, ids[1])
        image.last_checked_at = datetime.now(UTC) - timedelta(seconds=61)
        session.add(image)
    with session_scope(write=False) as session:
        before = {i: session.get(Image, i).last_checked_at for i in ids}
    worker.run_cycle()  # b only (an unchanged healthy image is summarised, not a new row: compare the times)
    with session_scope(write=False) as session:
        after = {i: session.get(Image, i).last_checked_at for i in ids}
    assert [after[i] == before[i] for i in ids] == [True, False, True]
    assert after[ids[1]].replace(tzinfo=UTC) > datetime.now(UTC) - timedelta(seconds=30)


def test_one_worker_per_home(settings):
    with WorkerLock(settings.home):
        with pytest.raises(WorkerLockedError, match=r"another worker is already running for this database \(pid \d+"):
            Worker(load_settings()).run_once()


def test_worker_settings_are_validated(settings, tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("worker:\n  poll_interval: 0\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    from healing.errors import ConfigError
    with pytest.raises(ConfigError, match="worker.poll_interval must be ≥ 0.1, got 0.0"):
        WorkerSettings.from_settings(load_settings())


def test_a_live_worker_of_the_same_node_on_another_host_is_refused(settings, monkeypatch):
    with session_scope() as session:
        queries.beat_heartbeat(session, "other-host:99", pid=99, host="other-host", info={"heartbeat_interval": 10})
        queries.beat_heartbeat(session, "third-host:98", pid=98, host="third-host", info={"heartbeat_interval": 10})
        set_heartbeat_node(session, "third-host:98", "node-b")
    if settings.database_url.startswith("sqlite"):
        assert Worker(load_settings(), node="other-host").run_once()["checked"] == 0  # SQLite: a foreign heartbeat is no lock
        monkeypatch.setattr("healing.worker.database_is_shared", lambda: True)
    # PostgreSQL (really, or SQLite pretending to be shared): one worker per node. A beat written before
    # nodes existed counts for the node named like its host.
    with pytest.raises(WorkerLockedError, match=r"^another worker is already running for node other-host on this database "
                                                r"\(pid 99 on other-host, heartbeat \d+ s ago\)$"):
        Worker(load_settings(), node="other-host").run_once()
    with pytest.raises(WorkerLockedError, match=r"for node node-b on this database \(pid 98 on third-host"):
        Worker(load_settings(), node="node-b").run_once()
    assert Worker(load_settings(), node="node-c").run_once()["checked"] == 0  # another node: a fleet, not a lock
    with session_scope() as session:
        queries.beat_heartbeat(session, "other-host:99", pid=99, host="other-host", state="stopped")
    assert Worker(load_settings(), node="other-host").run_once()["checked"] == 0


def test_configured_healing_actions_are_loaded_by_the_worker(settings, make_image, tmp_path, monkeypatch):
    image = make_image()
    good = image.read_bytes()
    (tmp_path / "good.bin").write_bytes(good)  # what the site's action restores (it is imported after the damage)
    register_image(image, settings=settings)
    module = f"site_actions_{tmp_path.name}"  # one module per test run: parametrized runs must not share it
    (tmp_path / f"{module}.py").write_text(
        "from pathlib import Path\n"
        "CALLS = []\n"
        f"GOOD = Path({str(tmp_path / 'good.bin')!r}).read_bytes()\n"
        "async def repair(result):\n"
        "    CALLS.append((result.image_path, str(result.status)))\n"
        "    Path(result.image_path).write_bytes(GOOD)\n"
        "    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "c.yaml"
    config.write_text(f"health_check:\n  auto_heal: true\nhealing:\n  actions: ['{module}:repair']\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    flip_idat_byte(image)
    summary = Worker(load_settings()).run_once()
    assert importlib.import_module(module).CALLS == [(str(image), "critical")]
    assert (summary["healed"], image.read_bytes() == good) == (1, True)
    with session_scope(write=False) as session:  # the custom action healed it: no golden restore; its full name (58 characters) is kept
        assert [(h["action"], h["outcome"]) for h in queries.recent_heals(session)] == [(f"custom:{module}:repair", "healed")]


def test_job_hooks_let_other_areas_add_jobs(settings, monkeypatch):
    module = types.ModuleType("fake_worker_jobs")

    def register_jobs(scheduler, settings, job_options):
        scheduler.add_job(print, "interval", seconds=30, id="tuning-observe", **job_options)

    module.register_jobs = register_jobs
    monkeypatch.setitem(sys.modules, "fake_worker_jobs", module)
    monkeypatch.setattr("healing.worker.JOB_HOOKS", ["fake_worker_jobs:register_jobs", "absent_module_xyz:register_jobs"])
    worker = Worker(load_settings())
    worker.scheduler = BlockingScheduler()
    assert worker.add_extra_jobs() == ["fake_worker_jobs:register_jobs"]
    job = worker.scheduler.get_job("tuning-observe")
    assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 600)


def test_run_once_counts_a_check_overrunning_its_timeout_as_unknown(settings, make_image):
    import threading
    import time

    from healing.analysis import VLMHealthChecker

    real = VLMHealthChecker(settings)

    class SlowChecker:
        def check_health(self, path, baseline=None):
            time.sleep(0.8)  # a hung mount or a slow model would look the same
            return real.check_health(path, baseline=baseline)

    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    settings.health_check.timeout_s = 0.2
    summary = Worker(settings, checker=SlowChecker()).run_once()
    assert summary == {"checked": 1, "healthy": 0, "warning": 0, "critical": 0, "unknown": 1, "healed": 0,
                       "heal_failed": 0, "requests": 0, "reused": 0}
    for thread in threading.enumerate():  # the overrun check finishes on its own and records its result
        if thread.name.startswith("check-"):
            thread.join(timeout=10)
    with session_scope(write=False) as session:
        history = queries.check_history(session, image_id)
    assert [(c["status"], (c["findings"] or [{}])[0].get("category")) for c in history] == [
        ("unknown", "performance"), ("healthy", None)]


def test_each_sync_reconciles_abandoned_heals_and_checks_their_images_now(settings, make_image):
    import socket
    import subprocess
    import sys

    from storage.models import Heal

    image = register_image(make_image(), settings=settings, interval_s=3600)["image"]
    worker = Worker(load_settings())
    worker.scheduler = BlockingScheduler()

    def last_checked() -> object:  # unchanged healthy checks are summarised, not stored as rows: read the image
        with session_scope(write=False) as session:
            return session.get(Image, image["id"]).last_checked_at

    worker.run_cycle()  # checked now: not due again for an hour
    first = last_checked()
    assert first is not None
    worker.run_cycle()
    assert last_checked() == first
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with session_scope() as session:  # what a process killed mid-heal leaves behind
        heal_id = queries.record_heal(session, image_path=image["path"], action="restore_golden", outcome="started",
                                      image_id=image["id"], detail={"golden_sha256": "0" * 64,
                                                                    "owner": {"pid": gone.pid, "host": socket.gethostname()}})["id"]
    worker.sync_jobs()
    with session_scope(write=False) as session:
        assert session.get(Heal, heal_id).outcome == "interrupted"
    worker.run_cycle()  # the interrupted heal's image is looked at in the next cycle, an hour early
    second = last_checked()
    assert second > first
    worker.run_cycle()
    assert last_checked() == second
