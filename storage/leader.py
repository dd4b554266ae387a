"""Leader election among the workers of one database, and the global jobs only the leader runs.

Several ``selfheal worker --node NAME`` processes (one per host) may share one PostgreSQL database.
Image checks are per node (storage.nodes); the *global* jobs — tuning intents and promotion expiry,
promotion watches, audit checkpoints, retention — must run once per period for the whole fleet.

PostgreSQL: the leader is the worker whose dedicated connection holds the session-level advisory lock
LEADER_LOCK_KEY (``pg_try_advisory_lock``, never waiting). The lock lives as long as that connection:
a leader killed with SIGKILL loses it the moment the kernel closes its socket, a host that vanishes
loses it when the server's TCP keepalive (set on that session, ~15 s) gives up. Followers try again
every ``worker.leader_interval`` seconds (default 5), so a new leader takes over within
leader_interval + keepalive, well inside 30 s. The connection's application_name is
``selfheal-leader:<node>``, so anyone can read who leads (current_leader).

SQLite is one worker per database (the worker's flock): that worker is always the leader and says so.

Exactly once per period: each global job claims its period ("slot" = floor(unix time / interval)) in
the ``leader_jobs`` table with one conditional UPDATE before it runs. Even two workers that both
believed they led (a paused process waking up after a takeover) cannot run the same slot twice, and
a new leader runs the current slot of every job within one leader_interval.

Public API
  LEADER_LOCK_KEY
  Leadership(node, url=None)        .poll() -> bool, .is_leader, .shared, .since, .release()
  current_leader(session) -> str | None       the leading node (PostgreSQL), None when nobody leads
  claim_slot(session, job, slot, node, now=None) -> bool
  job_runs(session) -> list[dict]            the leader_jobs rows (job, slot, node, ran_at, runs)
  LeaderOnlyScheduler(scheduler, leadership, node, tick)   what JOB_HOOKS get on a shared database
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from storage.models import LeaderJob

log = logging.getLogger("selfheal.worker.leader")

# A fixed 64-bit key (signed, as PostgreSQL's bigint): the first 8 bytes of sha256("selfheal.leader").
LEADER_LOCK_KEY = int.from_bytes(hashlib.sha256(b"selfheal.leader").digest()[:8], "big", signed=True)
APPLICATION_PREFIX = "selfheal-leader:"
# Server-side TCP keepalive of the leader's session: a vanished host's lock is freed after about
# idle + interval * count seconds (5 + 5 * 2 = 15 s).
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 5, 2


class Leadership:
    """This worker's claim to lead. ``poll`` is called every leader_interval by the worker."""

    def __init__(self, node: str, url: str | None = None) -> None:
        from storage.engine import get_engine

        self.node = node
        self._url = url
        self._engine = get_engine(url)
        self.shared = self._engine.dialect.name != "sqlite"
        self._lock = threading.Lock()
        self._connection: sa.Connection | None = None
        self._dedicated: sa.Engine | None = None
        self.is_leader = not self.shared
        self.since: float | None = time.time() if not self.shared else None

    def _connect(self) -> sa.Connection:
        if self._dedicated is None:
            self._dedicated = sa.create_engine(
                self._engine.url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT",
                connect_args={"application_name": f"{APPLICATION_PREFIX}{self.node}"[:63], "connect_timeout": 10})
        connection = self._dedicated.connect()
        for name, value in (("tcp_keepalives_idle", KEEPALIVE_IDLE_S), ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_S),
                            ("tcp_keepalives_count", KEEPALIVE_COUNT)):
            connection.exec_driver_sql(f"SET {name} = {int(value)}")
        return connection

    def poll(self) -> bool:
        """Keep or try to take the lead; returns whether this worker leads now. Never raises: a database
        that cannot be reached means not leading (the lock is gone with the connection anyway)."""
        if not self.shared:
            return True
        with self._lock:
            try:
                if self._connection is None:  # followers keep theirs too: one connect, not one per poll
                    self._connection = self._connect()
                if self.is_leader:
                    self._connection.exec_driver_sql("SELECT 1")  # still our session, so still our lock
                    return True
                got = bool(self._connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"),
                                                    {"key": LEADER_LOCK_KEY}).scalar())
                if got:
                    self.is_leader, self.since = True, time.time()
                    log.debug("node %s took the leader lock", self.node)
                return got
            except sa.exc.SQLAlchemyError as exc:
                if self.is_leader:
                    log.warning("node %s lost the lead: %s", self.node, " ".join(str(exc).split())[:200])
                self._drop()
                return False

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except sa.exc.SQLAlchemyError:
                pass
        self._connection, self.is_leader, self.since = None, False, None

    def release(self) -> None:
        """Give the lead up (clean stop): unlock and close the dedicated connection."""
        if not self.shared:
            return
        with self._lock:
            if self._connection is not None and self.is_leader:
                try:
                    self._connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK_KEY})
                except sa.exc.SQLAlchemyError:
                    pass
            self._drop()
            if self._dedicated is not None:
                self._dedicated.dispose()
                self._dedicated = None

    def describe(self) -> str:
        """For the start line and the status: "single worker (SQLite)", "leader" or "follower"."""
        if not self.shared:
            return "single worker (SQLite)"
        return "leader" if self.is_leader else "follower"


def current_leader(session: Session) -> str | None:
    """The node whose session holds the leader lock, or None (nobody leads; SQLite: None too)."""
    if session.connection().dialect.name != "postgresql":
        return None
    lo, hi = LEADER_LOCK_KEY & 0xFFFFFFFF, (LEADER_LOCK_KEY >> 32) & 0xFFFFFFFF
    name = session.execute(sa.text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid::bigint = :hi AND l.objid::bigint = :lo"), {"hi": hi, "lo": lo}).scalar()
    if not name or not str(name).startswith(APPLICATION_PREFIX):
        return None
    return str(name)[len(APPLICATION_PREFIX):]


def claim_slot(session: Session, job: str, slot: int, node: str, now: datetime | None = None) -> bool:
    """Take period ``slot`` of ``job`` for ``node``: True once per (job, slot) across every worker.
    One conditional UPDATE (row created on first use), so the database decides, not the callers."""
    now = now or datetime.now(UTC)
    table = LeaderJob.__table__
    claimed = session.execute(
        sa.update(table).where(table.c.job == job, table.c.slot < slot)
        .values(slot=slot, node=node, ran_at=now, runs=table.c.runs + 1).returning(table.c.job)).first()
    if claimed is not None:
        return True
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    inserted = session.execute(insert(table).values(job=job, slot=slot, node=node, ran_at=now, runs=1)
                               .on_conflict_do_nothing(index_elements=["job"]).returning(table.c.job)).first()
    return inserted is not None


def job_runs(session: Session) -> list[dict[str, Any]]:
    """Every global job's last claimed slot, by job."""
    table = LeaderJob.__table__
    return [dict(row) for row in session.execute(sa.select(table).order_by(table.c.job)).mappings()]


class LeaderOnlyScheduler:
    """A stand-in for the APScheduler scheduler handed to JOB_HOOKS on a shared database: every
    interval job they add runs only on the leader, at most once per period of its interval across the
    fleet (claim_slot). Its scheduler job ticks every ``tick`` seconds (or its interval, if shorter),
    so a new leader runs each job's current period within one tick."""

    def __init__(self, scheduler: Any, leadership: Leadership, node: str, tick: float,
                 url: str | None = None) -> None:
        self._scheduler, self._leadership, self._node, self._tick, self._url = scheduler, leadership, node, tick, url
        self._last: dict[str, int] = {}

    def add_job(self, func: Callable[..., Any], trigger: str = "interval", *, args: Any = None, seconds: float,
                id: str, **options: Any) -> Any:  # noqa: A002 - APScheduler's keyword
        if trigger != "interval":
            raise ValueError(f"leader-only job {id}: only interval jobs can be claimed per period, got {trigger!r}")
        return self._scheduler.add_job(self.run_slot, "interval", args=[id, float(seconds), func, list(args or [])],
                                       seconds=min(float(seconds), self._tick), id=id, **options)

    def run_slot(self, job: str, interval: float, func: Callable[..., Any], args: list[Any]) -> bool:
        """Run ``func(*args)`` if this worker leads and the current period of ``job`` is not taken yet."""
        from storage.engine import session_scope

        if not self._leadership.is_leader:
            return False
        slot = math.floor(time.time() / interval)
        if self._last.get(job) == slot:
            return False
        with session_scope(self._url) as session:
            claimed = claim_slot(session, job, slot, self._node)
        self._last[job] = slot
        if not claimed:
            return False
        log.info("global job %s slot %d on node %s", job, slot, self._node)
        func(*args)
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)
