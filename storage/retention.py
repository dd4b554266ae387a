"""Unchanged checks stay small, and old rows go away (issue 15; docs/retention.md).

A healthy image whose file did not change would otherwise cost a full check row and an audit event
every interval forever (~1.4 KB a check). Instead:

  is_unchanged(last, data, facts) -> bool
      The rule: a check may be summarised when it reused the last check's analysis (same sha256 and
      size), has the same status, is not "unknown" and has no findings. Status changes, findings and
      heals are always recorded in full (storage.queries.record_check / record_heal).
  record_unchanged(session, image_ids, *, at=None, samples_every_s=None, actor="worker") -> dict
      Counts one unchanged check of each image in check_summaries (one UPDATE for the batch) and
      moves images.last_checked_at. An image whose newest check row is ``samples_every_s`` old gets a
      sampled check row (a copy of that row at ``at``: the trend charts and latest_check keep working);
      the samples of one call are one audit event ``check.sampled`` listing (image id, check id,
      unchanged checks so far) — the unchanged checks between samples are accounted for there, not
      one event each. Returns {"counted": n, "sampled": {image_id: new check id}, "check_ids": {image_id:
      the image's newest check id}} (unknown ids are skipped). Call it once per batch of a cycle, in the
      batch's transaction: its cost is a few statements per 500 images, whether samples are due or not
      (decided in SQL; the samples are one multi-row INSERT and two executemany UPDATEs).
  record_cycle_checks(session, checks, *, actor, now=None, samples_every_s) -> list[int | None]
      Drop-in for storage.worker_queries.record_reused_checks in the worker's batched cycle: the
      reused checks that are unchanged (healthy, no findings) go through record_unchanged, the others
      are stored in full by record_reused_checks; returns each check's id in order (for a summarised
      one, the image's newest check: the sample just written or the earlier row).
  run_retention(settings, now=None) -> dict
      Deletes what is older than ``storage.retention``: checks (never an image's newest check or one a
      heal refers to), acknowledged alerts, finished requests, stale heartbeats; then moves audit
      events older than ``audit_archive_after_days`` into a verified archive segment
      (storage.archive). Deletes in batches of ``batch_size`` rows per transaction; what it deleted is
      one audit event ``retention.pruned``. Returns the counts.
  RetentionSettings.from_settings(settings)   the ``storage.retention`` section (documented defaults)
  register_jobs(scheduler, settings, job_options)   the worker's "retention" job (healing.worker.JOB_HOOKS),
      every ``interval_s``; H11's leader election moves it to one node later
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session

from healing.errors import ConfigError
from storage.audit import append_event
from storage.models import Alert, Check, CheckSummary, Heal, Image, RunRequest, WorkerHeartbeat, utcnow

if TYPE_CHECKING:
    from healing.config import Settings

log = logging.getLogger(__name__)

KIND_CHECK_SAMPLED = "check.sampled"
KIND_RETENTION = "retention.pruned"
_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True)
class RetentionSettings:
    """``storage.retention``; a number of days 0 keeps those rows forever."""

    checks_days: float = 30.0
    alerts_days: float = 90.0  # acknowledged alerts only: an alert nobody has seen is never deleted
    requests_days: float = 30.0  # finished (done/failed) run-now requests
    heartbeats_days: float = 7.0  # heartbeat rows of workers not seen for that long
    samples_every_s: float = 14400.0  # one sampled check row per unchanged image every 4 h (trend points)
    audit_archive_after_days: float = 30.0  # audit events older than this move to archive segments
    audit_archive_dir: str | None = None  # default: the checkpoint file's directory / archive
    interval_s: float = 3600.0  # how often the worker runs run_retention
    batch_size: int = 5000  # rows deleted per transaction

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionSettings:
        from healing.config import _as_number
        from healing.config_schema import unknown_key_line

        storage = settings.section("storage")
        for key in storage:
            if key != "retention":
                raise ConfigError(unknown_key_line(f"storage.{key}", ["retention"]))
        raw = storage.get("retention") or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config: storage.retention must be a mapping, got {type(raw).__name__}")
        known = [f.name for f in fields(cls)]
        for key in raw:
            if str(key) not in known:
                raise ConfigError(unknown_key_line(f"storage.retention.{key}", known))
        d = cls()
        values: dict[str, Any] = {}
        for name, kind, low, high in (("checks_days", float, 0, 36500), ("alerts_days", float, 0, 36500),
                                      ("requests_days", float, 0, 36500), ("heartbeats_days", float, 0, 36500),
                                      ("samples_every_s", float, 0, 86400 * 365),
                                      ("audit_archive_after_days", float, 0, 36500),
                                      ("interval_s", float, 1, 86400 * 7), ("batch_size", int, 1, 1_000_000)):
            values[name] = _as_number(f"storage.retention.{name}", raw.get(name, getattr(d, name)), kind, low, high)
        archive_dir = raw.get("audit_archive_dir")
        if archive_dir is not None and not isinstance(archive_dir, str):
            raise ConfigError(f"config: storage.retention.audit_archive_dir must be a path, got {archive_dir!r}")
        return cls(**values, audit_archive_dir=archive_dir)


def _utc(moment: datetime | None) -> datetime:
    moment = moment or utcnow()
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _chunks(values: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(values), _IN_CHUNK):
        yield values[i:i + _IN_CHUNK]


# --------------------------------------------------------------------------- unchanged checks

def is_unchanged(last: Mapping[str, Any] | None, data: Mapping[str, Any], facts: Mapping[str, Any]) -> bool:
    """Whether a check result may be summarised instead of stored: the analysis of ``last`` (the image's
    newest check row) was reused for the same file, with the same status, not unknown, no findings."""
    if last is None or not facts.get("reused"):
        return False
    status = data.get("status")
    return (status == last.get("status") and status != "unknown" and not data.get("findings")
            and not last.get("findings") and last.get("file_sha256") is not None
            and facts.get("file_sha256") == last.get("file_sha256"))


_COPIED = ("image_id", "image_path", "status", "confidence", "metrics", "findings", "recommendation", "duration_ms",
           "file_size", "file_sha256", "file_mtime_ns")


def record_unchanged(session: Session, image_ids: Iterable[int], *, at: datetime | None = None,
                     samples_every_s: float | None = None, actor: str = "worker") -> dict[str, Any]:
    """Count one unchanged check of each image (see the module docstring); returns what was written.

    Set-wise, whatever the number of images: per IN-list of _IN_CHUNK ids one SELECT (whether a sample is
    due is decided in SQL, so no timestamp is parsed), one UPDATE of the counters and one of
    last_checked_at; the samples of the call are one multi-row INSERT and two executemany UPDATEs."""
    at = _utc(at)
    if samples_every_s is None:
        from healing.config import load_settings

        samples_every_s = RetentionSettings.from_settings(load_settings()).samples_every_s
    ids = sorted({int(i) for i in image_ids})
    i, c, s = Image.__table__.c, Check.__table__.c, CheckSummary.__table__.c
    newest: dict[int, int | None] = {}  # image id → its newest check id (what the caller reports)
    due: list[tuple[int, int]] = []  # (image id, check id to copy)
    missing: list[int] = []  # images without a check_summaries row yet
    if samples_every_s > 0:
        # A sample is due when the newest row (the check, or the last sample) is samples_every_s old.
        cutoff = at - timedelta(seconds=samples_every_s)
        wanted: Any = sa.case((sa.and_(c.id.is_not(None), c.created_at <= cutoff,
                                       sa.or_(s.last_sample_at.is_(None), s.last_sample_at <= cutoff)), 1), else_=0)
    else:
        wanted = sa.literal(0)
    for chunk in _chunks(ids):
        query = (sa.select(i.id, i.last_check_id, s.image_id, wanted)
                 .select_from(Image.__table__
                              .outerjoin(Check.__table__, c.id == i.last_check_id)
                              .outerjoin(CheckSummary.__table__, s.image_id == i.id))
                 .where(i.id.in_(chunk)))
        for image_id, check_id, summary, sample in session.execute(query):
            newest[image_id] = check_id
            if summary is None:
                missing.append(image_id)
            if sample:
                due.append((image_id, check_id))
    if not newest:
        return {"counted": 0, "sampled": {}, "check_ids": {}}
    known = sorted(newest)
    if missing:
        session.execute(sa.insert(CheckSummary.__table__),
                        [{"image_id": n, "unchanged_checks": 0, "sampled_checks": 0, "first_unchanged_at": at} for n in missing])
    for chunk in _chunks(known):
        session.execute(sa.update(CheckSummary.__table__).where(s.image_id.in_(chunk))
                        .values(unchanged_checks=s.unchanged_checks + 1, last_unchanged_at=at))
        session.execute(sa.update(Image.__table__).where(i.id.in_(chunk)).values(last_checked_at=at))
    sampled: dict[int, int] = {}
    if due:
        written = _write_samples(session, due, at)
        sampled = {image_id: new_id for image_id, (new_id, _status) in written.items()}
        newest.update(sampled)
        counted: dict[int, int] = {}
        for chunk in _chunks(sorted(sampled)):
            counted.update(session.execute(sa.select(s.image_id, s.unchanged_checks).where(s.image_id.in_(chunk))).all())
        append_event(session, KIND_CHECK_SAMPLED, "images", {
            "counted": len(known),
            "samples": [[image_id, *written[image_id], int(counted[image_id])] for image_id, _ in due],
            "samples_every_s": samples_every_s,
        }, actor, now=at)
    session.flush()
    return {"counted": len(known), "sampled": sampled, "check_ids": {n: newest[n] for n in known}}


def _write_samples(session: Session, due: list[tuple[int, int]], at: datetime) -> dict[int, tuple[int, str]]:
    """Copy each (image id, check id) row as a sampled check at ``at``, point the image and its summary at
    the copy; returns {image id: (new check id, its status)}."""
    c = Check.__table__.c
    sources: dict[int, Any] = {}
    for chunk in _chunks([check_id for _, check_id in due]):
        for row in session.execute(sa.select(c.id, *(getattr(c, n) for n in _COPIED)).where(c.id.in_(chunk))):
            sources[row.id] = row._mapping
    rows = [{**{n: sources[check_id][n] for n in _COPIED}, "reused_analysis": True, "created_at": at}
            for _, check_id in due]
    # RETURNING in any order (parameter order makes SQLite insert row by row): an image is sampled once per call.
    table = Check.__table__
    new = dict(session.connection().execute(sa.insert(table).returning(table.c.image_id, table.c.id), rows).all())
    connection = session.connection()
    images, summaries = Image.__table__, CheckSummary.__table__
    connection.execute(sa.update(images).where(images.c.id == sa.bindparam("b_id"))
                       .values(last_check_id=sa.bindparam("b_check")),
                       [{"b_id": image_id, "b_check": new[image_id]} for image_id, _ in due])
    connection.execute(sa.update(summaries).where(summaries.c.image_id == sa.bindparam("b_id"))
                       .values(sampled_checks=summaries.c.sampled_checks + 1, last_sample_at=at,
                               last_sample_check_id=sa.bindparam("b_check")),
                       [{"b_id": image_id, "b_check": new[image_id]} for image_id, _ in due])
    return {image_id: (new[image_id], sources[check_id]["status"]) for image_id, check_id in due}


def record_cycle_checks(session: Session, checks: list[dict[str, Any]], *, actor: str, now: datetime | None = None,
                        samples_every_s: float) -> list[int | None]:
    """record_reused_checks for a cycle batch, with unchanged checks summarised (see the module docstring)."""
    from storage.worker_queries import record_reused_checks

    now = _utc(now)
    quiet = [ch for ch in checks if ch.get("status") == "healthy" and not ch.get("findings")]
    full = [ch for ch in checks if not (ch.get("status") == "healthy" and not ch.get("findings"))]
    ids: dict[int, int] = {}
    if quiet:
        out = record_unchanged(session, [ch["image_id"] for ch in quiet], at=now, samples_every_s=samples_every_s,
                               actor=actor)
        ids.update(out["check_ids"])
    if full:
        ids.update(zip([ch["image_id"] for ch in full], record_reused_checks(session, full, actor=actor, now=now),
                       strict=True))
    return [ids.get(ch["image_id"]) for ch in checks]  # None: an image unregistered meanwhile


def check_summary(session: Session, image_id: int) -> dict[str, Any] | None:
    """The image's check_summaries row as a dict, or None when no unchanged check was counted yet."""
    row = session.get(CheckSummary, image_id)
    return row.model_dump() if row is not None else None


# --------------------------------------------------------------------------- retention

def _delete_batches(url: str | None, table: sa.Table, where: Any, batch_size: int) -> int:
    """Delete the rows matching ``where`` (a callable building the clause) in batches of ``batch_size``
    ids, one transaction each, so a worker's checks are never held up for long. Returns the count."""
    from storage.engine import session_scope

    total = 0
    pk = list(table.primary_key.columns)[0]
    while True:
        with session_scope(url) as session:
            ids = [r[0] for r in session.execute(sa.select(pk).where(*where()).order_by(pk).limit(batch_size))]
            if not ids:
                return total
            for chunk in _chunks(ids):
                session.execute(sa.delete(table).where(pk.in_(chunk)))
        total += len(ids)
        if len(ids) < batch_size:
            return total


def run_retention(settings: Settings, now: datetime | None = None, *, url: str | None = None) -> dict[str, Any]:
    """Apply ``storage.retention`` once (see the module docstring); returns the counts and the archive."""
    from storage.archive import archive_old_events
    from storage.engine import session_scope

    now = _utc(now)
    config = RetentionSettings.from_settings(settings)
    url = url or settings.database_url
    batch = config.batch_size
    counts = {"checks": 0, "alerts": 0, "requests": 0, "heartbeats": 0}

    def cutoff(days: float) -> datetime:
        return now - timedelta(days=days)

    c, h, i = Check.__table__.c, Heal.__table__.c, Image.__table__.c
    if config.checks_days > 0:
        newest = sa.select(i.last_check_id).where(i.last_check_id.is_not(None))
        healed = sa.select(h.check_id).where(h.check_id.is_not(None))
        counts["checks"] = _delete_batches(url, Check.__table__, lambda: (
            c.created_at < cutoff(config.checks_days), c.id.not_in(newest), c.id.not_in(healed)), batch)
    if config.alerts_days > 0:
        a = Alert.__table__.c
        counts["alerts"] = _delete_batches(url, Alert.__table__, lambda: (
            a.created_at < cutoff(config.alerts_days), a.acknowledged.is_(True), a.webhook_state != "pending"), batch)
    if config.requests_days > 0:
        r = RunRequest.__table__.c
        counts["requests"] = _delete_batches(url, RunRequest.__table__, lambda: (
            r.created_at < cutoff(config.requests_days), r.status.in_(["done", "failed"])), batch)
    if config.heartbeats_days > 0:
        w = WorkerHeartbeat.__table__.c
        counts["heartbeats"] = _delete_batches(url, WorkerHeartbeat.__table__, lambda: (
            w.last_beat < cutoff(config.heartbeats_days),), batch)
    archived = None
    if config.audit_archive_after_days > 0:
        archived = archive_old_events(settings, before=cutoff(config.audit_archive_after_days), url=url, now=now)
    if any(counts.values()):
        with session_scope(url) as session:
            append_event(session, KIND_RETENTION, "database", {
                **counts, "limits_days": {k: v for k, v in asdict(config).items() if k.endswith("_days")}}, "retention", now=now)
    log.info("retention: deleted %s%s", ", ".join(f"{n} {k}" for k, n in counts.items()),
             f"; archived audit events {archived['first_seq']}..{archived['last_seq']}" if archived else "")
    return {**counts, "archived": archived}


RETENTION_JOB = "retention"


def register_jobs(scheduler: Any, settings: Settings, job_options: dict[str, Any]) -> list[str]:
    """Add the worker's periodic retention job (first run one interval after start)."""
    from healing.errors import SelfHealError

    config = RetentionSettings.from_settings(settings)

    def job() -> None:
        try:
            run_retention(settings, utcnow())
        except SelfHealError as exc:
            log.warning("retention: %s", exc)
        except Exception:
            log.exception("retention failed")

    scheduler.add_job(job, "interval", seconds=config.interval_s, id=RETENTION_JOB, name="retention",
                      next_run_time=utcnow() + timedelta(seconds=min(config.interval_s, 300)), **job_options)
    return [RETENTION_JOB]
