"""`selfheal worker`: the one process that checks, heals and runs requested work (DESIGN.md §3).

An APScheduler 3.x ``BlockingScheduler`` runs:
  check-cycle        every ``worker.cycle_interval`` (0.5 s): the batched check cycle (``check_cycle``) over
                     the images due at their interval (default health_check.interval) — one read, hashing
                     in threads, unchanged images recorded in batches, the rest checked one by one
  sync-images        registers/updates config ``monitoring.images``, reconciles interrupted heals (their
                     images are checked in the next cycle) (every ``worker.sync_interval``)
  poll-requests      claims "run now" requests from the dashboard/CLI (every ``worker.poll_interval``)
  heartbeat          refreshes this worker's row in worker_heartbeats (every ``worker.heartbeat_interval``)
  prune-quarantine   deletes quarantine copies older than ``healing.quarantine_retention_days`` (hourly)
  retention          storage.retention.run_retention: old checks, alerts, requests, heartbeats deleted, old
                     audit events archived (every ``storage.retention.interval_s``, a JOB_HOOKS hook)
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
import hashlib
import importlib
import inspect
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from healing.config import Settings, _as_number, load_settings
from healing.errors import SelfHealError, printable

log = logging.getLogger("selfheal.worker")

LOCK_NAME = "worker.lock"
TUNING_HOOK = "healing.tuning.runner:process_pending_intents"
# Other areas add their periodic jobs (log observation, intent processing, promotion expiry) here:
# each is called as hook(scheduler, settings, job_options) when importable, and skipped otherwise.
JOB_HOOKS = ["healing.tuning.worker_jobs:register_jobs", "storage.retention:register_jobs"]
SYNC_JOB, POLL_JOB, HEARTBEAT_JOB, CYCLE_JOB = "sync-images", "poll-requests", "heartbeat", "check-cycle"
LEADER_JOB = "leader"  # PostgreSQL: keep or take the fleet's lead (storage.leader), every worker.leader_interval
QUARANTINE_JOB, QUARANTINE_PRUNE_INTERVAL_S = "prune-quarantine", 3600
CHECK_JOB_PREFIX = "check:"  # per-image jobs of earlier versions; sync_jobs removes any left in a scheduler


class WorkerLockedError(SelfHealError):
    """Another worker already holds the lock for this home/database (exit 3)."""


@dataclass(frozen=True)
class WorkerSettings:
    """The ``worker`` config section (all in seconds, except threads)."""

    poll_interval: float = 2.0
    cycle_interval: float = 0.5  # how often the scheduled check cycle looks for images due at their interval
    heartbeat_interval: float = 10.0
    sync_interval: float = 30.0
    threads: int = 4
    misfire_grace_time: int = 600
    shutdown_grace: float = 5.0  # after SIGTERM, how long running jobs may finish before the process exits
    node: str | None = None  # this worker's node (storage.nodes); default: the host name; --node overrides
    leader_interval: float = 5.0  # followers try to take the lead this often; the leader checks it still holds it

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerSettings:
        raw = settings.section("worker")
        d = cls()
        return cls(
            poll_interval=_as_number("worker.poll_interval", raw.get("poll_interval", d.poll_interval), float, 0.1, 3600),
            cycle_interval=_as_number("worker.cycle_interval", raw.get("cycle_interval", d.cycle_interval), float, 0.1, 3600),
            heartbeat_interval=_as_number("worker.heartbeat_interval", raw.get("heartbeat_interval", d.heartbeat_interval),
                                          float, 0.5, 3600),
            sync_interval=_as_number("worker.sync_interval", raw.get("sync_interval", d.sync_interval), float, 0.5, 86400),
            threads=_as_number("worker.threads", raw.get("threads", d.threads), int, 1, 64),
            misfire_grace_time=_as_number("worker.misfire_grace_time", raw.get("misfire_grace_time", d.misfire_grace_time),
                                          int, 1, 86400),
            shutdown_grace=_as_number("worker.shutdown_grace", raw.get("shutdown_grace", d.shutdown_grace), float, 0, 8),
            node=_node_setting(raw.get("node")),
            leader_interval=_as_number("worker.leader_interval", raw.get("leader_interval", d.leader_interval), float, 0.2, 10),
        )


def _node_setting(value: Any) -> str | None:
    from healing.errors import ConfigError
    from storage.nodes import check_node_name

    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"config: worker.node must be a name, got {value!r}")
    try:
        return check_node_name(value)
    except ValueError as exc:
        raise ConfigError(f"config: worker.node: {exc}") from None


class _RunningCheck:
    """One image check running in its own daemon thread (a stuck one must not hold up the worker)."""

    def __init__(self, service: Any, image_id: int) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.record: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(service, image_id), name=f"check-{image_id}", daemon=True)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self, service: Any, image_id: int) -> None:
        try:
            self.record = service.check(image_id)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting job, which logs it once
            self.error = exc
        finally:
            self.done.set()


# A check cycle records its unchanged images in transactions of this many checks (and audit events).
CYCLE_BATCH = 2000
LARGE_FILE_BYTES = 4 << 20  # files this large hash in their own threads (up to worker.threads - 1)


def hash_entry(path: str) -> tuple[int, int, str] | None:
    """(size, mtime_ns, sha256) of the regular file that is the directory entry ``path`` (never through a
    symlink, never a FIFO or device), or None when it is anything else or unreadable: the full check
    then says why.

    The same refusals as healing.safeio.open_regular (O_NOFOLLOW, O_NONBLOCK, fstat before any read), on
    the bare descriptor: most files of a cycle are small, and for them the file object and the two
    fcntl calls cost more than the hashing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > _SMALL_READ:
            with os.fdopen(fd, "rb", closefd=False) as fh:  # O_NONBLOCK does not apply to regular files
                digest = hashlib.file_digest(fh, "sha256")
        else:
            digest = hashlib.sha256()
            while chunk := os.read(fd, _SMALL_READ):
                digest.update(chunk)
        return st.st_size, st.st_mtime_ns, digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


_SMALL_READ = 1 << 20  # files up to this size are read with os.read, larger ones streamed by hashlib.file_digest


class _CycleHasher:
    """Hashes a cycle's images, in order, in a few daemon threads (file reads and hashlib release the
    GIL), ahead of the batches being recorded. A file that hangs holds only its thread; ``wait_batch``
    gives up when no hash has completed for the timeout, and ``cancel`` stops what has not started."""

    def __init__(self, rows: list[dict[str, Any]], threads: int, batch_size: int) -> None:
        # Two lanes: small files in one thread (more would only fight over the GIL), large ones (last seen
        # at LARGE_FILE_BYTES or more) in up to threads - 1 others, so they never hold up the small ones.
        large = [row for row in rows if int(row.get("last_file_size") or 0) >= LARGE_FILE_BYTES]
        big = {row["id"] for row in large}
        self._lanes = {"small": deque(row for row in rows if row["id"] not in big), "large": deque(large)}
        self._cond = threading.Condition()
        self._cancelled = False
        self._batch_of = {row["id"]: n // batch_size for n, row in enumerate(rows)}
        self._left = [min(batch_size, len(rows) - start) for start in range(0, len(rows), batch_size)]
        self.completed = 0
        self.results: dict[int, tuple[int, int, str] | None] = {}
        self.running: dict[int, float] = {}  # image id → when its hash started (monotonic)
        self.durations_ms: dict[int, float] = {}
        lanes = ["small"] * bool(self._lanes["small"]) + ["large"] * min(max(1, threads - 1), len(large))
        for n, lane in enumerate(lanes):
            threading.Thread(target=self._work, args=(self._lanes[lane],), name=f"check-hash-{n}", daemon=True).start()

    def _work(self, pending: deque[dict[str, Any]]) -> None:
        while True:
            with self._cond:
                if self._cancelled or not pending:
                    return
                row = pending.popleft()
                began = self.running[row["id"]] = time.monotonic()
            result = hash_entry(row["path"])
            with self._cond:
                self.running.pop(row["id"], None)
                self.results[row["id"]] = result
                self.durations_ms[row["id"]] = round((time.monotonic() - began) * 1000, 3)
                self.completed += 1
                batch = self._batch_of[row["id"]]
                self._left[batch] -= 1
                if self._left[batch] == 0:
                    self._cond.notify_all()

    def wait_batch(self, batch: int, timeout: float, stopping: threading.Event) -> bool:
        """Wait until every hash of batch number ``batch`` is done; False when hashing made no progress
        for ``timeout`` seconds (a hung file) or the worker is stopping."""
        with self._cond:
            progress, since = self.completed, time.monotonic()
            while self._left[batch] > 0:
                if stopping.is_set():
                    return False
                if self.completed != progress:
                    progress, since = self.completed, time.monotonic()
                elif time.monotonic() - since >= timeout:
                    return False
                self._cond.wait(min(0.25, max(0.0, since + timeout - time.monotonic())))
        return True

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True

    def alive(self, image_id: int) -> bool:
        with self._cond:
            return image_id in self.running


class _StuckHash:
    """The _checks entry of an image whose cycle hash overran: busy while its hash thread still runs."""

    def __init__(self, hasher: _CycleHasher, image_id: int, started: float) -> None:
        self.hasher, self.image_id, self.started = hasher, image_id, started

    def alive(self) -> bool:
        return self.hasher.alive(self.image_id)


def _reusable(row: dict[str, Any], facts: tuple[int, int, str] | None) -> bool:
    """True when the check would only repeat the last one: same size and sha256 as the last check, that
    check healthy or warning, and the file equal to its golden copy (so no unexpected change, no alert and
    no heal can follow). Everything else gets the full per-image check."""
    if facts is None or row["last_status"] not in ("healthy", "warning"):
        return False
    checked, updated = row.get("last_checked_at"), row.get("updated_at")
    if checked is not None and updated is not None and checked < updated:
        return False  # re-registered or accepted since: that analysis was judged against the old golden copy
    size, _mtime, sha = facts
    golden = row["golden_sha256"]
    return row["last_file_sha256"] == sha and row["last_file_size"] == size and (not golden or golden == sha)


def _no_findings(text: str | None) -> bool:
    """True for the JSON text of an empty findings list (or none stored)."""
    return text is None or text.strip() in ("[]", "null", "")


def _json(text: str | None, empty: Any) -> Any:
    """The value of a JSON column read as text (storage.worker_queries.images_due); ``empty`` when NULL
    or not JSON (a damaged row is logged and must not stop the cycle of every other image)."""
    if text is None:
        return empty
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("a stored check result is not valid JSON (%s); read as empty", printable(text[:60]))
        return empty
    return empty if value is None or not isinstance(value, type(empty)) else value


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
                 worker_id: str | None = None, notifier: Any | None = None, node: str | None = None) -> None:
        from healing.images.actions import load_actions
        from healing.images.notify import WebhookNotifier
        from healing.images.service import ImageService

        self.settings = settings or load_settings()
        self.config = WorkerSettings.from_settings(self.settings)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        from storage.nodes import default_node, use_node

        self.node = default_node(node or self.config.node)  # storage.nodes: the images this worker checks
        use_node(self.node)  # and the node of the images it registers (config monitoring.images)
        self._leadership: Any = None
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
        self._forced: set[int] = set()  # images the next scheduled cycle checks whether due or not
        self._first_cycle = True  # the scheduled worker's first cycle checks every image
        self._retry_at: dict[int, float] = {}  # image id → monotonic time: a failed check waits its interval
        self.abandoned_threads = 0  # threads still running when run_forever returned (the CLI must not wait)

    # ------------------------------------------------------------------ preparation

    @property
    def leadership(self) -> Any:
        """This worker's storage.leader.Leadership, made on first use (it opens the database), which
        also tries for the lead once: `worker --once` alone on a database leads for its run."""
        if self._leadership is None:
            from storage.leader import Leadership

            self._leadership = Leadership(self.node)
            self._leadership.poll()
        return self._leadership

    def own_node(self) -> str | None:
        """Whose images this worker checks: its node's on a shared database, every image (None) on SQLite."""
        return self.node if self.leadership.shared else None

    def refuse_remote_worker(self) -> None:
        """The flock guards one home; on a shared database (PostgreSQL) one worker runs per node: a live
        heartbeat of this node from another worker (not a dead process of this host) refuses the start.
        SQLite is a local file: the flock is enough."""
        from healing.procs import pid_alive
        from storage.engine import session_scope
        from storage.nodes import live_workers

        if not database_is_shared():
            return
        with session_scope(write=False) as session:
            beats = live_workers(session, self.node)
        for beat in beats:
            if beat["worker_id"] == self.worker_id or (beat["host"] == socket.gethostname() and not pid_alive(int(beat["pid"]))):
                continue
            raise WorkerLockedError(f"another worker is already running for node {self.node} on this database "
                                    f"(pid {beat['pid']} on {beat['host']}, heartbeat {beat['age_s']:.0f} s ago)")

    def prepare(self) -> None:
        """Schema upgrade, close requests a dead worker left running, register config images, resend alerts."""
        from storage.engine import session_scope
        from storage.migrate import upgrade
        from storage.worker_queries import fail_abandoned_requests

        upgrade()
        self.refuse_remote_worker()
        with session_scope() as session:
            if database_is_shared():  # other nodes' workers are running theirs
                from storage.nodes import fail_orphaned_requests

                fail_orphaned_requests(session, reason="the worker stopped while running this request", node=self.node,
                                       worker_id=self.worker_id)
            else:
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
        if registered:
            from storage.nodes import assign_paths

            with session_scope() as session:
                assign_paths(session, registered, self.node, only_unowned=True, actor="config")
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
            if running is not None and running.alive():
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

    def run_cycle(self) -> None:
        """The scheduled check-cycle job: the images due (and any forced), batched; never raises."""
        with self._checks_lock:
            forced, self._forced = self._forced, set()
            first, self._first_cycle = self._first_cycle, False
        try:
            # The first cycle after start checks every image, as the per-image jobs of earlier versions did;
            # later ones take the images due within half a tick (checks land at interval ± cycle_interval/2).
            self.check_cycle(due_only=not first, also=forced, lead_s=self.config.cycle_interval / 2)
        except SelfHealError as exc:
            with self._checks_lock:
                self._forced |= forced
                self._first_cycle = self._first_cycle or first
            log.warning("check cycle failed: %s", exc)

    def check_cycle(self, *, due_only: bool = True, also: set[int] | None = None,
                    lead_s: float = 0.0) -> tuple[list[Any], int]:
        """Check the images that are due (all of them when not ``due_only``), batched.

        One read gives the images and their last checks. The files are hashed in daemon threads ahead of
        the batches of CYCLE_BATCH images being recorded (one thread for small files, up to
        ``worker.threads`` - 1 others for large ones). An image whose size and sha256 equal its last healthy/warning
        check and its golden copy is recorded with the reused analysis, one transaction per batch
        (storage.retention.record_cycle_checks: a healthy one without findings is counted in
        check_summaries with a sampled row now and then, the others get check rows and audit events);
        every other image (changed, missing, replaced, unreadable,
        critical, never checked) gets the full bounded per-image check. When hashing makes no progress
        for health_check.timeout_s, the hung image is recorded as an overrun like a stuck check and the
        images not hashed yet get their own bounded checks. Returns (CheckRecords, overruns)."""
        from storage.engine import session_scope
        from storage.worker_queries import images_due

        with session_scope(write=False) as session:
            rows = images_due(session, due_only=due_only, node=self.own_node(),
                              now=datetime.now(UTC) + timedelta(seconds=lead_s))
            if also:
                seen = {row["id"] for row in rows}
                rows += [row for row in images_due(session, due_only=False, ids=sorted(also), node=self.own_node())
                         if row["id"] not in seen]
        if due_only:  # an image whose check failed (not recorded) waits its interval instead of every tick
            moment = time.monotonic()
            rows = [row for row in rows if self._retry_at.get(row["id"], 0.0) <= moment or row["id"] in (also or ())]
        records: list[Any] = []
        overruns = 0
        todo = []
        with self._checks_lock:
            busy = []
            for row in rows:
                running = self._checks.get(row["id"])
                if running is not None and running.alive():
                    busy.append((row["id"], time.monotonic() - running.started))
                else:
                    self._checks.pop(row["id"], None)
                    todo.append(row)
        for image_id, busy_for in busy:
            self._record_overrun(image_id, busy_for, first=False)
            overruns += 1
        hasher = _CycleHasher(todo, self.config.threads, CYCLE_BATCH)
        hung = False
        try:
            for number, start in enumerate(range(0, len(todo), CYCLE_BATCH)):
                batch = todo[start:start + CYCLE_BATCH]
                if not hung and not hasher.wait_batch(number, self.settings.health_check.timeout_s, self._stopping):
                    hung = True
                    hasher.cancel()
                if self._stopping.is_set():
                    break
                overruns += self._check_batch(batch, hasher, records)
        finally:
            hasher.cancel()
        with self._stats_lock:
            self._stats["checks"] += len(records)
            self._stats["heals"] += sum(r.heal is not None for r in records)
        return records, overruns

    def _check_batch(self, batch: list[dict[str, Any]], hasher: _CycleHasher, records: list[Any]) -> int:
        """Record one hashed batch of check_cycle (appending CheckRecords to ``records``); returns overruns."""
        overruns = 0
        fast, full = [], []
        for row in batch:
            if row["id"] in hasher.results:
                (fast if _reusable(row, hasher.results[row["id"]]) else full).append(row)
            elif hasher.alive(row["id"]):
                started = hasher.running.get(row["id"], time.monotonic())
                with self._checks_lock:
                    self._checks[row["id"]] = _StuckHash(hasher, row["id"], started)
                timeout = self.settings.health_check.timeout_s
                log.warning("check of image %s did not finish within %g s: recorded unknown", row["id"], timeout)
                self._record_overrun(row["id"], timeout, first=True)
                overruns += 1
            else:
                full.append(row)  # not hashed before hashing stopped: its own bounded check
        full.extend(self._record_reused(fast, hasher, records))
        # (the hash threads are still filling hasher.results for later batches: look up, never iterate)
        sizes = {row["id"]: facts[0] for row in full if (facts := hasher.results.get(row["id"])) is not None}
        return overruns + self._full_checks(full, records, sizes)

    def _full_checks(self, rows: list[dict[str, Any]], records: list[Any], sizes: dict[int, int]) -> int:
        """The full bounded checks of a batch (changed, never checked, unreadable…); records appended in
        ``rows`` order; returns the overruns. An image whose check failed waits its interval.

        Large files (``sizes``: this cycle's hashes, LARGE_FILE_BYTES or more) are checked in up to
        worker.threads - 1 threads while the small ones go one after another in this thread: decoding a
        large image mostly runs outside the GIL (zlib, numpy), a small one mostly inside it, where more
        threads only slowed a first cycle of 1,000 small images down (6.0 s → 6.5-6.8 s on 2 cores)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(row: dict[str, Any]) -> tuple[Any, bool]:
            if self._stopping.is_set():
                return None, False
            record, overran = self._bounded_check(row["id"])
            if record is not None:
                self._retry_at.pop(row["id"], None)
            elif not overran:
                self._retry_at[row["id"]] = time.monotonic() + float(row["interval_s"] or 60)
            return record, overran

        large = [n for n, row in enumerate(rows) if sizes.get(row["id"], 0) >= LARGE_FILE_BYTES]
        results: dict[int, tuple[Any, bool]] = {}
        threads = min(self.config.threads - 1, len(large))
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="check-large") if threads >= 1 else None
        try:
            futures = {n: pool.submit(one, rows[n]) for n in large} if pool is not None else {}
            for n, row in enumerate(rows):
                if n not in futures:
                    results[n] = one(row)
            for n, future in futures.items():
                results[n] = future.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        overruns = 0
        for n in range(len(rows)):
            record, overran = results[n]
            if record is not None:
                records.append(record)
            overruns += overran
        return overruns

    def _record_reused(self, rows: list[dict[str, Any]], hasher: _CycleHasher, records: list[Any]) -> list[dict[str, Any]]:
        """Record the unchanged images of a batch in one transaction; returns the rows left for the full
        check (an image another check or heal holds right now, or all of them when the write failed)."""
        from healing.images.integrity import iso_now
        from healing.images.service import CheckRecord
        from storage.engine import session_scope
        from storage.retention import RetentionSettings, record_cycle_checks

        facts, durations = hasher.results, hasher.durations_ms
        samples_every_s = RetentionSettings.from_settings(self.settings).samples_every_s
        held, rest = [], []
        for row in rows:
            lock = self.service._lock_for(row["id"])
            if lock.acquire(blocking=False):
                held.append((row, lock))
            else:
                rest.append(row)
        if not held:
            return rest
        try:
            checks = []
            for row, _lock in held:
                size, mtime_ns, sha = facts[row["id"]]
                if row["last_status"] == "healthy" and _no_findings(row["last_findings_json"]):
                    # Only counted (storage.retention.record_unchanged): no JSON to decode here.
                    checks.append({"image_id": row["id"], "status": "healthy", "findings": [], "row": row,
                                   "file_sha256": sha})
                    continue
                checks.append({"image_id": row["id"], "image_path": row["path"], "status": row["last_status"],
                               "confidence": row["last_confidence"], "metrics": _json(row["last_metrics_json"], {}),
                               "findings": _json(row["last_findings_json"], []), "row": row,
                               "recommendation": row["last_recommendation"] or "",
                               "duration_ms": durations.get(row["id"], 0.0), "file_size": size, "file_sha256": sha,
                               "file_mtime_ns": mtime_ns})
            try:
                with session_scope() as session:  # healthy and finding-free: counted, not stored (storage.retention)
                    ids = record_cycle_checks(session, checks, actor=self.service.actor, samples_every_s=samples_every_s)
            except SelfHealError as exc:
                log.warning("%d unchanged checks not recorded in one batch (%s): checking them one by one", len(checks), exc)
                return [row for row, _lock in held] + rest
        finally:
            for _row, lock in held:
                lock.release()
        now = iso_now()
        for check, check_id in zip(checks, ids, strict=True):
            if check_id is None:
                continue  # unregistered meanwhile
            row = check["row"]
            data = {"image_path": row["path"], "status": check["status"], "confidence": row["last_confidence"],
                    "metrics": check["metrics"] if "metrics" in check else _json(row["last_metrics_json"], {}),
                    "findings": list(check["findings"]), "recommendation": row["last_recommendation"] or "",
                    "timestamp": now, "duration_ms": durations.get(row["id"], 0.0)}
            records.append(CheckRecord(row["path"], row["id"], data, check_id, check["file_sha256"], True, False))
        return rest

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
                if self.leadership.shared:
                    from storage.nodes import claim_request

                    request = claim_request(session, self.worker_id, self.node, leader=self.leadership.is_leader)
                else:
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

    def _watched_images(self) -> int | None:
        import sqlalchemy as sa

        from storage.engine import session_scope
        from storage.models import Image

        node = self.own_node()
        query = sa.select(sa.func.count()).select_from(Image.__table__)
        if node is not None:
            query = query.where(Image.__table__.c.node == node)
        try:
            with session_scope(write=False) as session:
                return int(session.execute(query).scalar_one())
        except SelfHealError:
            return None

    def beat(self, state: str = "running") -> None:
        from storage import queries
        from storage.engine import session_scope

        with self._stats_lock:
            info: dict[str, Any] = dict(self._stats)
        if self.scheduler is not None:  # the images the check cycle keeps an eye on (one "job" each, as before)
            info["jobs"] = self._watched_images()
        info["heartbeat_interval"] = self.config.heartbeat_interval
        info["node"], info["role"] = self.node, self.leadership.describe()
        try:
            from storage.nodes import set_heartbeat_node

            with session_scope() as session:
                queries.beat_heartbeat(session, self.worker_id, pid=os.getpid(), host=socket.gethostname(), state=state, info=info)
                set_heartbeat_node(session, self.worker_id, self.node)
        except SelfHealError as exc:
            log.warning("heartbeat not written: %s", exc)

    # ------------------------------------------------------------------ modes

    def run_once(self) -> dict[str, Any]:
        """Check every registered image now (healing where auto-heal applies), run pending requests, return.

        Each check is bounded by health_check.timeout_s like the scheduled ones; an overrun counts as unknown."""
        self.lock.acquire()
        beating = False
        try:
            self.prepare()
            records, overruns = self.check_cycle(due_only=False)
            # On a shared database the leader closes the running requests of workers without a live
            # heartbeat: the requests this run takes must not look orphaned.
            beating = database_is_shared()
            if beating:
                self.beat()
            requests = self.process_requests()
            self.prune_quarantine()
            self.service.remove_stale_temps()
            self.notifier.close(timeout=self.settings.healing.notification.timeout * 2)
        finally:
            if beating:
                self.beat("stopped")
            if self._leadership is not None:
                self._leadership.release()
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
        """Register config images, reconcile interrupted heals (their images join the next cycle), and
        remove per-image check jobs an earlier version left in the scheduler."""
        self.sync_config_images()
        recheck = self.service.reconcile_heals()
        if self.leadership.shared and self.leadership.is_leader:
            self.lead_housekeeping()
        if recheck:
            with self._checks_lock:
                self._forced |= set(recheck)  # an interrupted heal: look at the file in the next cycle
        if self.scheduler is not None:
            for job in self.scheduler.get_jobs():
                if job.id.startswith(CHECK_JOB_PREFIX):
                    self.scheduler.remove_job(job.id)

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
            self.leadership.poll()
            self.beat("starting")
            self.prepare()
            if self._stopping.is_set():
                return 0
            self.scheduler = BlockingScheduler(executors={"default": executor}, timezone=UTC)
            now = datetime.now(UTC)
            for job_id, body, seconds in ((SYNC_JOB, self.sync_jobs, self.config.sync_interval),
                                          (CYCLE_JOB, self.run_cycle, self.config.cycle_interval),
                                          (POLL_JOB, self.process_requests, self.config.poll_interval),
                                          (HEARTBEAT_JOB, self.beat, self.config.heartbeat_interval),
                                          (QUARANTINE_JOB, self.prune_quarantine, QUARANTINE_PRUNE_INTERVAL_S)):
                self.scheduler.add_job(guarded(job_id, body), "interval", seconds=seconds, id=job_id, next_run_time=now,
                                       **self._job_options())
            if self.leadership.shared:
                self.scheduler.add_job(guarded(LEADER_JOB, self.poll_leadership), "interval", seconds=self.config.leader_interval,
                                       id=LEADER_JOB, **self._job_options())
            self.add_extra_jobs()
            # A signal between here and the main loop finds the scheduler not running yet: stop it as it starts.
            self.scheduler.add_listener(self._stop_if_signalled, EVENT_SCHEDULER_START)
            log.info("worker %s started (home %s, node %s, %s)", self.worker_id, self.settings.home, self.node,
                     self.leadership.describe())
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
            if self._leadership is not None:
                self._leadership.release()
            self.lock.release()
        return 0

    def poll_leadership(self) -> None:
        """The leader job: keep or take the lead; a new leader at once tidies what a dead one left."""
        was = self.leadership.is_leader
        if self.leadership.poll() and not was:
            log.info("node %s is now the leader (runs the global jobs)", self.node)
            self.beat()
            self.lead_housekeeping()

    def lead_housekeeping(self) -> None:
        """What the leader does for the fleet besides the global jobs: adopt images without a node, and
        close requests whose worker is gone."""
        from storage.engine import session_scope
        from storage.nodes import adopt_unowned, fail_orphaned_requests

        with session_scope() as session:
            adopted = adopt_unowned(session, self.node)
            failed = fail_orphaned_requests(session, reason="the worker stopped while running this request")
        if adopted or failed:
            log.info("leader %s: adopted %d image(s) without a node, closed %d request(s) of stopped workers",
                     self.node, adopted, failed)

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

    def _global_scheduler(self) -> Any:
        """What JOB_HOOKS add their (global) jobs to: on a shared database a LeaderOnlyScheduler, so each
        runs on the leader only, once per period; on SQLite the scheduler itself (the one worker leads)."""
        if not self.leadership.shared:
            return self.scheduler
        from storage.leader import LeaderOnlyScheduler

        return LeaderOnlyScheduler(self.scheduler, self.leadership, self.node, self.config.leader_interval)

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
            hook(self._global_scheduler(), self.settings, self._job_options())
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
    from storage.engine import session_scope
    from storage.models import WorkerHeartbeat

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(SelfHealError):
            with session_scope(write=False) as session:  # its own row: other nodes' workers beat here too
                row = session.get(WorkerHeartbeat, f"{socket.gethostname()}:{pid}")
                beat = row.model_dump() if row is not None else None
            if beat is not None and beat["state"] in ("starting", "running"):
                return beat
        time.sleep(0.1)
    return None
