"""`selfheal worker`: the one process that checks, heals and runs requested work (DESIGN.md §3).

An APScheduler 3.x ``BlockingScheduler`` runs:
  check:<image id>   one job per registered image at its interval (default health_check.interval)
  sync-images        registers/updates config ``monitoring.images`` and adds/removes/reschedules the
                     per-image jobs when images are registered or removed (every ``worker.sync_interval``)
  poll-requests      claims "run now" requests from the dashboard/CLI (every ``worker.poll_interval``)
  heartbeat          refreshes this worker's row in worker_heartbeats (every ``worker.heartbeat_interval``)
  prune-quarantine   deletes quarantine copies older than ``healing.quarantine_retention_days`` (hourly)
  (hooks)            jobs other areas register through JOB_HOOKS (e.g. the tuning runner's)
All jobs have fixed ids, ``coalesce=True``, ``max_instances=1`` and a generous misfire grace time.

Only one worker runs per $SELFHEAL_HOME/database: it holds an exclusive ``fcntl.flock`` on
``$SELFHEAL_HOME/worker.lock`` for its lifetime (released by the kernel even after kill -9); a second
worker exits 3 with one line. SIGTERM/SIGINT stop it cleanly: running jobs finish, the heartbeat
says "stopped". ``run_once`` (``selfheal worker --once``) checks every image now, processes pending
requests, prunes the quarantine and returns.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from healing.config import Settings, _as_number, load_settings
from healing.errors import SelfHealError

log = logging.getLogger("selfheal.worker")

LOCK_NAME = "worker.lock"
TUNING_HOOK = "healing.tuning.runner:process_pending_intents"
# Other areas add their periodic jobs (log observation, intent processing, promotion expiry) here:
# each is called as hook(scheduler, settings, job_options) when importable, and skipped otherwise.
JOB_HOOKS = ["healing.tuning.worker_jobs:register_jobs"]
SYNC_JOB, POLL_JOB, HEARTBEAT_JOB = "sync-images", "poll-requests", "heartbeat"
QUARANTINE_JOB, QUARANTINE_PRUNE_INTERVAL_S = "prune-quarantine", 3600
CHECK_JOB_PREFIX = "check:"


class WorkerLockedError(SelfHealError):
    """Another worker already holds the lock for this home/database (exit 3)."""


@dataclass(frozen=True)
class WorkerSettings:
    """The ``worker`` config section (all in seconds, except threads)."""

    poll_interval: float = 2.0
    heartbeat_interval: float = 10.0
    sync_interval: float = 30.0
    threads: int = 4
    misfire_grace_time: int = 600
    shutdown_grace: float = 5.0  # after SIGTERM, how long running jobs may finish before the process exits

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerSettings:
        raw = settings.section("worker")
        d = cls()
        return cls(
            poll_interval=_as_number("worker.poll_interval", raw.get("poll_interval", d.poll_interval), float, 0.1, 3600),
            heartbeat_interval=_as_number("worker.heartbeat_interval", raw.get("heartbeat_interval", d.heartbeat_interval),
                                          float, 0.5, 3600),
            sync_interval=_as_number("worker.sync_interval", raw.get("sync_interval", d.sync_interval), float, 0.5, 86400),
            threads=_as_number("worker.threads", raw.get("threads", d.threads), int, 1, 64),
            misfire_grace_time=_as_number("worker.misfire_grace_time", raw.get("misfire_grace_time", d.misfire_grace_time),
                                          int, 1, 86400),
            shutdown_grace=_as_number("worker.shutdown_grace", raw.get("shutdown_grace", d.shutdown_grace), float, 0, 8),
        )


class _RunningCheck:
    """One image check running in its own daemon thread (a stuck one must not hold up the worker)."""

    def __init__(self, service: Any, image_id: int) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.record: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(service, image_id), name=f"check-{image_id}", daemon=True)

    def _run(self, service: Any, image_id: int) -> None:
        try:
            self.record = service.check(image_id)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting job, which logs it once
            self.error = exc
        finally:
            self.done.set()


def guarded(name: str, body: Any) -> Any:
    """Wrap a scheduler job: an expected operational failure (database locked or full, disk full) is one
    log line and the job runs again at its next interval; only a bug gets a traceback."""

    def job(*args: Any) -> None:
        try:
            body(*args)
        except SelfHealError as exc:
            log.warning("%s: %s", name, exc)
        except Exception:
            log.exception("%s failed", name)

    job.__name__ = name
    return job


class WorkerLock:
    """An exclusive, non-blocking flock on $SELFHEAL_HOME/worker.lock holding the owner's pid."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise WorkerLockedError(f"another worker is already running for this database (pid {holder}, lock {self.path})") from None
        with contextlib.suppress(OSError):  # the pid is for messages; the flock is the lock (a full disk must not stop us)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> WorkerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def configure_logging(settings: Settings) -> None:
    """Log to the configured file (or stderr) at the configured level, once per process."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler: logging.Handler = logging.FileHandler(settings.logging.file) if settings.logging.file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(settings.logging.format))
    root.addHandler(handler)
    root.setLevel(settings.logging.level)
    # Library chatter (Alembic's "Context impl SQLiteImpl", scheduler job ticks) is not operator news.
    for noisy in ("apscheduler", "alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class Worker:
    """Scheduler, request poller and heartbeat around an ImageService."""

    def __init__(self, settings: Settings | None = None, *, checker: Any | None = None, actions: list[Any] | None = None,
                 worker_id: str | None = None, notifier: Any | None = None) -> None:
        from healing.images.actions import load_actions
        from healing.images.notify import WebhookNotifier
        from healing.images.service import ImageService

        self.settings = settings or load_settings()
        self.config = WorkerSettings.from_settings(self.settings)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.notifier = notifier if notifier is not None else WebhookNotifier(self.settings.healing.notification)
        configured = load_actions(self.settings.healing.actions)
        self.service = ImageService(self.settings, checker=checker, notifier=self.notifier,
                                    actions=[*configured, *(actions or [])], actor="worker")
        self.lock = WorkerLock(self.settings.home)
        self.scheduler: Any = None
        self._register_failures: dict[str, str] = {}
        self._stats = {"checks": 0, "heals": 0, "requests": 0}
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._checks: dict[int, _RunningCheck] = {}  # image id → its check thread (may outlive its deadline)
        self._checks_lock = threading.Lock()
        self.abandoned_threads = 0  # threads still running when run_forever returned (the CLI must not wait)

    # ------------------------------------------------------------------ preparation

    def refuse_remote_worker(self) -> None:
        """The flock guards one machine; on a shared database (PostgreSQL) a live heartbeat from another
        host means another worker is running against it. SQLite is a local file: the flock is enough."""
        from storage import queries
        from storage.engine import session_scope

        if not database_is_shared():
            return
        with session_scope(write=False) as session:
            beat = queries.worker_heartbeat(session)
        if beat is None or beat["worker_id"] == self.worker_id or beat["host"] == socket.gethostname():
            return
        interval = float((beat.get("info") or {}).get("heartbeat_interval") or self.config.heartbeat_interval)
        if beat["state"] in ("starting", "running") and beat["age_s"] <= 3 * interval:
            raise WorkerLockedError(f"another worker is already running for this database (pid {beat['pid']} on "
                                    f"{beat['host']}, heartbeat {beat['age_s']:.0f} s ago)")

    def prepare(self) -> None:
        """Schema upgrade, close requests a dead worker left running, register config images, resend alerts."""
        from storage.engine import session_scope
        from storage.migrate import upgrade
        from storage.worker_queries import fail_abandoned_requests

        upgrade()
        self.refuse_remote_worker()
        with session_scope() as session:
            fail_abandoned_requests(session, reason="the worker stopped while running this request")
        self.service.reconcile_heals()  # the image checks that follow re-check what it touched
        self.sync_config_images()
        self.notifier.submit_pending()

    def sync_config_images(self) -> list[str]:
        """Register config ``monitoring.images`` that are not registered yet; update critical/interval of
        those that are. Returns the paths registered now. A file that cannot be registered is logged once
        per distinct reason (and retried at every sync)."""
        from healing.images.registry import normalise_path, register_image
        from storage import queries
        from storage.engine import session_scope

        base = self.settings.config_path.parent if self.settings.config_path else None
        registered = []
        for entry in self.settings.monitored_images:
            path = normalise_path(entry.path, base)
            interval = entry.check_interval or self.settings.health_check.interval
            with session_scope(write=False) as session:
                image = queries.get_image(session, path=path)
            if image is None:
                try:
                    register_image(path, settings=self.settings, critical=entry.critical, interval_s=interval, actor="config")
                except SelfHealError as exc:
                    if self._register_failures.get(path) != str(exc):
                        self._register_failures[path] = str(exc)
                        log.error("cannot register configured image %s: %s", path, exc)
                    continue
                self._register_failures.pop(path, None)
                registered.append(path)
            elif image["critical"] != entry.critical or image["interval_s"] != interval:
                with session_scope() as session:
                    queries.upsert_image(session, path, critical=entry.critical, interval_s=interval, actor="config")
        return registered

    # ------------------------------------------------------------------ units of work

    def check_image(self, image_id: int) -> None:
        """The body of a check:<id> job; never raises (a failing job must not disturb the scheduler)."""
        record = self.bounded_check(image_id)
        if record is not None:
            with self._stats_lock:
                self._stats["checks"] += 1
                self._stats["heals"] += record.heal is not None

    def bounded_check(self, image_id: int) -> Any:
        """Check (and maybe heal) one image in its own daemon thread, waiting at most health_check.timeout_s.

        An overrun is recorded as an unknown check with an alert and not waited for; while that thread
        still runs, later checks of the image are recorded unknown instead of piling up behind it.
        Returns the CheckRecord, or None (overrun, unregistered, failed: logged in one line)."""
        return self._bounded_check(image_id)[0]

    def _bounded_check(self, image_id: int) -> tuple[Any, bool]:
        """(record or None, True when the check overran or an earlier one is still running)."""
        timeout = self.settings.health_check.timeout_s
        with self._checks_lock:
            running = self._checks.get(image_id)
            if running is not None and running.thread.is_alive():
                busy_for = time.monotonic() - running.started
            else:
                running = _RunningCheck(self.service, image_id)
                self._checks[image_id] = running
                busy_for = None
        if busy_for is not None:
            self._record_overrun(image_id, busy_for, first=False)
            return None, True
        running.thread.start()
        deadline = running.started + timeout
        while not running.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._stopping.is_set():
                return None, False  # shutting down: the check thread is a daemon; a heal it began is reconciled
            if time.monotonic() >= deadline:
                log.warning("check of image %s did not finish within %g s: recorded unknown", image_id, timeout)
                self._record_overrun(image_id, timeout, first=True)
                return None, True
        with self._checks_lock:
            self._checks.pop(image_id, None)
        if isinstance(running.error, LookupError):
            return None, False  # unregistered meanwhile
        if isinstance(running.error, SelfHealError):
            log.warning("check of image %s failed: %s", image_id, running.error)
            return None, False
        if running.error is not None:
            log.error("check of image %s failed", image_id, exc_info=running.error)
            return None, False
        return running.record, False

    def _record_overrun(self, image_id: int, seconds: float, *, first: bool) -> None:
        try:
            self.service.record_overrun(image_id, seconds, first=first)
        except SelfHealError as exc:
            log.warning("overrun of image %s not recorded: %s", image_id, exc)

    def process_requests(self, limit: int | None = None) -> int:
        """Claim and run pending requests, oldest first; returns how many were processed."""
        from storage import queries
        from storage.engine import session_scope

        done = 0
        while limit is None or done < limit:
            with session_scope() as session:
                request = queries.claim_next_request(session, self.worker_id)
            if request is None:
                break
            try:
                ok, result = self._run_request(request)
            except SelfHealError as exc:
                ok, result = False, {"error": str(exc)}
            except Exception as exc:
                log.exception("request %s failed", request["id"])
                ok, result = False, {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            with session_scope() as session:
                queries.finish_request(session, request["id"], ok=ok, result=result)
            done += 1
        with self._stats_lock:
            self._stats["requests"] += done
        return done

    def _target_path(self, target: str) -> str:
        from healing.images.registry import normalise_path

        if target.isdigit():
            image = self.service.get_image(image_id=int(target))
            if image is None:
                raise LookupError(f"image {target} is not registered")
            return str(image["path"])
        return normalise_path(target)

    def _run_request(self, request: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        from healing.images.registry import register_image

        kind, actor = request["kind"], request["requested_by"] or "dashboard"
        if kind == "tune":
            return run_tuning_hook(self.settings)
        try:
            path = self._target_path(request["target"])
        except LookupError as exc:
            return False, {"error": str(exc)}
        if kind == "check":
            image = self.service.get_image(path=path)
            record = self.bounded_check(image["id"]) if image is not None else self.service.check_path(path)
            if record is None:
                return False, {"error": f"the check of {path} did not complete within health_check.timeout_s "
                                        f"({self.settings.health_check.timeout_s:g} s) or failed; see the worker log"}
            return True, {"status": record.status, "check_id": record.check_id, "reused_analysis": record.reused,
                          "heal": record.heal.to_dict() if record.heal else None}
        if kind == "heal":
            report = self.service.heal(path, actor=actor)
            return report.healthy, report.to_dict()
        if kind == "accept_change":
            outcome = register_image(path, settings=self.settings, accept_current=True, actor=actor)
            # Judge the accepted file against its new golden copy now: the last check (warning, judged
            # against the old one) must not be what later checks of the unchanged file reuse.
            record = self.bounded_check(outcome["image"]["id"])
            return True, {"golden_sha256": outcome["golden_sha256"], "changed": outcome["changed"],
                          "accepted_with_problems": outcome["accepted_current"],
                          "status": record.status if record is not None else None,
                          "check_id": record.check_id if record is not None else None}
        return False, {"error": f"unknown request kind {kind!r}"}

    def beat(self, state: str = "running") -> None:
        from storage import queries
        from storage.engine import session_scope

        with self._stats_lock:
            info: dict[str, Any] = dict(self._stats)
        if self.scheduler is not None:
            info["jobs"] = len([j for j in self.scheduler.get_jobs() if j.id.startswith(CHECK_JOB_PREFIX)])
        info["heartbeat_interval"] = self.config.heartbeat_interval
        try:
            with session_scope() as session:
                queries.beat_heartbeat(session, self.worker_id, pid=os.getpid(), host=socket.gethostname(), state=state, info=info)
        except SelfHealError as exc:
            log.warning("heartbeat not written: %s", exc)

    # ------------------------------------------------------------------ modes

    def run_once(self) -> dict[str, Any]:
        """Check every registered image now (healing where auto-heal applies), run pending requests, return.

        Each check is bounded by health_check.timeout_s like the scheduled ones; an overrun counts as unknown."""
        from storage.engine import session_scope
        from storage.worker_queries import image_schedule

        self.lock.acquire()
        try:
            self.prepare()
            with session_scope(write=False) as session:
                ids = [row["id"] for row in sorted(image_schedule(session), key=lambda r: r["path"])]
            records, overruns = [], 0
            for image_id in ids:
                record, overran = self._bounded_check(image_id)
                if record is not None:
                    records.append(record)
                overruns += overran
            requests = self.process_requests()
            self.prune_quarantine()
            self.service.remove_stale_temps()
            self.notifier.close(timeout=self.settings.healing.notification.timeout * 2)
        finally:
            self.lock.release()
        counts = {s: 0 for s in ("healthy", "warning", "critical", "unknown")}
        for record in records:
            counts[record.status] = counts.get(record.status, 0) + 1
        counts["unknown"] += overruns
        heals = [r.heal for r in records if r.heal is not None]
        return {"checked": len(records) + overruns, **counts, "healed": sum(h.healthy for h in heals),
                "heal_failed": sum(not h.healthy for h in heals), "requests": requests,
                "reused": sum(r.reused for r in records)}

    def prune_quarantine(self) -> None:
        """Delete quarantine copies past healing.quarantine_retention_days; a failure is logged, never fatal."""
        try:
            self.service.prune_quarantine()
        except SelfHealError as exc:
            log.warning("quarantine prune failed: %s", exc)

    def sync_jobs(self) -> None:
        """Make the check:<id> jobs match the registered images and their intervals."""
        from storage.engine import session_scope
        from storage.worker_queries import image_schedule

        self.sync_config_images()
        recheck = self.service.reconcile_heals()
        with session_scope(write=False) as session:
            wanted = {f"{CHECK_JOB_PREFIX}{row['id']}": row for row in image_schedule(session)}
        existing = {job.id: job for job in self.scheduler.get_jobs() if job.id.startswith(CHECK_JOB_PREFIX)}
        for job_id in existing.keys() - wanted.keys():
            self.scheduler.remove_job(job_id)
        for job_id, row in wanted.items():
            job = existing.get(job_id)
            interval = timedelta(seconds=row["interval_s"])
            if job is None:
                self.scheduler.add_job(guarded("check", self.check_image), "interval", seconds=row["interval_s"],
                                       args=[row["id"]], id=job_id,
                                       name=f"check {row['path']}", next_run_time=datetime.now(UTC), **self._job_options())
            elif job.trigger.interval != interval:
                job.reschedule("interval", seconds=row["interval_s"])
            elif row["id"] in recheck:
                job.modify(next_run_time=datetime.now(UTC))  # an interrupted heal: look at the file now

    def _job_options(self) -> dict[str, Any]:
        return {"coalesce": True, "max_instances": 1, "misfire_grace_time": self.config.misfire_grace_time,
                "replace_existing": True}

    def run_forever(self) -> int:
        """Run the scheduler until SIGTERM/SIGINT; returns 0 after a clean stop.

        After the signal, running jobs get ``worker.shutdown_grace`` seconds; a check that is still running
        (stuck on a file system, overrunning) is not waited for: ``abandoned_threads`` says how many threads
        are left, and the CLI exits without joining them. A heal cut short is reconciled at the next start."""
        from apscheduler.events import EVENT_SCHEDULER_START
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.blocking import BlockingScheduler

        self.lock.acquire()
        executor = ThreadPoolExecutor(self.config.threads)
        stop = self._install_signal_handlers()
        try:
            from storage.migrate import upgrade

            upgrade()  # the heartbeat table must exist before the first beat
            self.refuse_remote_worker()
            self.beat("starting")
            self.prepare()
            if self._stopping.is_set():
                return 0
            self.scheduler = BlockingScheduler(executors={"default": executor}, timezone=UTC)
            now = datetime.now(UTC)
            for job_id, body, seconds in ((SYNC_JOB, self.sync_jobs, self.config.sync_interval),
                                          (POLL_JOB, self.process_requests, self.config.poll_interval),
                                          (HEARTBEAT_JOB, self.beat, self.config.heartbeat_interval),
                                          (QUARANTINE_JOB, self.prune_quarantine, QUARANTINE_PRUNE_INTERVAL_S)):
                self.scheduler.add_job(guarded(job_id, body), "interval", seconds=seconds, id=job_id, next_run_time=now,
                                       **self._job_options())
            self.add_extra_jobs()
            # A signal between here and the main loop finds the scheduler not running yet: stop it as it starts.
            self.scheduler.add_listener(self._stop_if_signalled, EVENT_SCHEDULER_START)
            log.info("worker %s started (home %s)", self.worker_id, self.settings.home)
            self.scheduler.start()
            # shutdown(wait=False) in the signal handler returned at once; give running jobs a bounded grace.
            deadline = time.monotonic() + self.config.shutdown_grace
            executor.shutdown(wait=False)
            self.abandoned_threads = self._wait_for_threads(deadline)
            self.notifier.close(timeout=max(0.1, deadline - time.monotonic()))
            if self.abandoned_threads:
                log.warning("worker %s: %d job thread(s) still running after %g s; not waiting for them",
                            self.worker_id, self.abandoned_threads, self.config.shutdown_grace)
            log.info("worker %s stopped (%s)", self.worker_id, stop.get("signal", "scheduler ended"))
        finally:
            self.beat("stopped")
            self.lock.release()
        return 0

    def _stop_if_signalled(self, _event: Any) -> None:
        if self._stopping.is_set():
            self.scheduler.shutdown(wait=False)

    def _wait_for_threads(self, deadline: float) -> int:
        """Wait until the job and check threads end or ``deadline`` passes; returns how many still run."""
        while True:
            others = [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()
                      and (not t.daemon or t.name.startswith("check-"))]
            if not others or time.monotonic() >= deadline:
                return len(others)
            time.sleep(0.05)

    def add_extra_jobs(self) -> list[str]:
        """Let other areas register their periodic jobs (JOB_HOOKS); returns the hooks that ran."""
        ran = []
        for spec in JOB_HOOKS:
            module_name, _, attr = spec.partition(":")
            try:
                hook = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError):
                log.debug("job hook %s not available", spec)
                continue
            hook(self.scheduler, self.settings, self._job_options())
            ran.append(spec)
        return ran

    def _install_signal_handlers(self) -> dict[str, str]:
        stop: dict[str, str] = {}

        def handler(signum: int, _frame: Any) -> None:
            stop["signal"] = signal.Signals(signum).name
            self._stopping.set()  # job threads waiting on a check stop waiting
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.shutdown(wait=False)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)
        return stop


def database_is_shared() -> bool:
    """True for a server database that workers on several machines could reach (not SQLite)."""
    from storage.engine import get_engine

    return get_engine().dialect.name != "sqlite"


def run_tuning_hook(settings: Settings) -> tuple[bool, dict[str, Any]]:
    """Run the tuning runner's pending intents if the tuning package provides the hook."""
    module_name, _, attr = TUNING_HOOK.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False, {"error": f"tuning runner not available: {module_name}.{attr} cannot be imported"}
    params = inspect.signature(hook).parameters
    outcome = hook(settings=settings) if "settings" in params else hook()
    if isinstance(outcome, dict):
        return True, outcome
    return True, {"result": outcome if isinstance(outcome, int | float | str | bool | list) or outcome is None else repr(outcome)}


def wait_for_heartbeat(pid: int, timeout: float) -> dict[str, Any] | None:
    """Poll the database until the worker with ``pid`` reports running (the daemon command's start-up wait)."""
    from storage import queries
    from storage.engine import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(SelfHealError):
            with session_scope(write=False) as session:
                beat = queries.worker_heartbeat(session)
            if beat is not None and beat["pid"] == pid and beat["state"] in ("starting", "running"):
                return beat
        time.sleep(0.1)
    return None
