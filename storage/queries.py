"""Plain query functions over the selfheal tables: sessions in, plain data out.

Every function takes an open ``session`` (from storage.engine.session_scope) and returns dicts,
lists of dicts, ints or a pandas DataFrame — never live ORM objects, so callers (the dashboard,
the worker, the CLI) can keep the data after the session closes. Timestamps are timezone-aware UTC
datetimes; ``now`` parameters default to the current time and exist so tests can fix the clock.
Write helpers flush but do not commit (session_scope commits) and append the matching audit event
in the same transaction, so a row and its audit record are committed together or not at all.

Writes (need a write session, the default of session_scope)
  upsert_image(session, path, *, name, critical, interval_s, golden_sha256, golden_path, baseline_path,
               baseline, auto_heal_enabled, actor, now) -> dict          audit: image.registered / image.updated
  insert_images(session, images, *, actor, now) -> list[dict | None]      audit: image.registered (one per image)
      upsert_image for many new paths at once: one SELECT, one multi-row INSERT, one append_events.
  set_image_flags(session, image_id, *, marked_bad, consecutive_heal_failures, auto_heal_enabled,
                  actor, now) -> dict                                     audit: image.updated
  record_check(session, result, *, image_id, file_size, file_sha256, file_mtime_ns, reused_analysis,
               actor, now) -> dict                                        audit: check
      ``result`` is the `check --json` object (DESIGN.md §4); updates the image's last_status.
  record_heal(session, *, image_path, action, outcome, image_id, check_id, source_path, quarantine_path,
              detail, duration_ms, actor, now) -> dict                    audit: heal
      A restore is recorded with outcome "started" before the file is touched, then finished:
  finish_heal(session, heal_id, *, outcome, detail, duration_ms, actor, now) -> dict   audit: heal
  record_alert(session, *, kind, severity, subject, message, reason, webhook, actor, now) -> dict   audit: alert
  acknowledge_alert(session, alert_id, *, by, now) -> dict                audit: alert.acknowledged
  mark_alert_delivery(session, alert_id, *, delivered, error, now) -> dict
  enqueue_request(session, kind, target, *, requested_by, now) -> dict    audit: request.enqueued
  claim_next_request(session, worker_id, *, kinds, now) -> dict | None    oldest pending → running
  finish_request(session, request_id, *, ok, result, now) -> dict        audit: request.finished
  beat_heartbeat(session, worker_id, *, pid, host, state, info, now) -> dict

Reads (any session; prefer session_scope(write=False) for pages)
  get_image(session, *, image_id=None, path=None) -> dict | None
  list_images_with_latest_status(session) -> list[dict]
  fleet_summary(session) -> {"healthy", "warning", "critical", "unknown", "total", "marked_bad"}
  latest_check(session, image_id) -> dict | None
  check_history(session, image_id, *, since=None, limit=500) -> list[dict]   oldest first
  check_history_frame(session, image_id, *, since=None, limit=500) -> pandas.DataFrame
  recent_heals(session, *, image_id=None, limit=50) -> list[dict]
  unfinished_heals(session) -> list[dict]   heals still "started" (a killed process's), oldest first
  recent_alerts(session, *, limit=50, include_acknowledged=True) -> list[dict]
  alerts_with_state(session, *, limit=50, states=None) -> list[dict]   + state open|acknowledged|resolved|info
  pending_webhook_alerts(session, *, limit=50) -> list[dict]
  audit_page(session, *, kind, subject, start, end, offset=0, limit=50, **more) -> list[dict]   highest seq first
  audit_count(session, *, kind, subject, start, end, **more) -> int   (more: actor, subject_contains, exclude_kinds)
  audit_kinds(session) -> list[str]
  worker_heartbeat(session, *, now=None) -> dict | None   the latest beat, with age_s
  pending_requests(session, *, limit=100) -> list[dict]   pending and running, oldest first
  list_promotions(session, *, status=None, limit=100) -> list[dict]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, select

from storage.audit import (
    KIND_ALERT,
    KIND_CHECK,
    KIND_HEAL,
    KIND_IMAGE_REGISTERED,
    KIND_IMAGE_UPDATED,
    KIND_REQUEST_ENQUEUED,
    KIND_REQUEST_FINISHED,
    append_event,
    append_events,
)
from storage.models import (
    ALERT_SEVERITIES,
    CHECK_STATUSES,
    REQUEST_KINDS,
    WORKER_STATES,
    Alert,
    AuditEvent,
    Check,
    Heal,
    Image,
    Promotion,
    RunRequest,
    WorkerHeartbeat,
    utcnow,
)

if TYPE_CHECKING:
    import pandas as pd


def _now(now: datetime | None) -> datetime:
    now = now or utcnow()
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _rows(result: sa.Result[Any]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in result]


def _require(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")


# --------------------------------------------------------------------------- images

_IMAGE_POLICY_FIELDS = ("name", "critical", "interval_s", "golden_sha256", "golden_path", "baseline_path", "auto_heal_enabled")


def upsert_image(
    session: Session,
    path: str,
    *,
    name: str | None = None,
    critical: bool | None = None,
    interval_s: int | None = None,
    golden_sha256: str | None = None,
    golden_path: str | None = None,
    baseline_path: str | None = None,
    baseline: dict[str, Any] | None = None,
    auto_heal_enabled: bool | None = None,
    actor: str = "system",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Register ``path`` or update its policy; arguments left as None keep their stored value."""
    now = _now(now)
    if interval_s is not None and interval_s < 1:
        raise ValueError(f"interval_s must be ≥ 1, got {interval_s}")
    image = session.exec(select(Image).where(Image.path == path)).first()
    given = {
        "name": name, "critical": critical, "interval_s": interval_s, "golden_sha256": golden_sha256,
        "golden_path": golden_path, "baseline_path": baseline_path, "auto_heal_enabled": auto_heal_enabled,
    }
    created = image is None
    if image is None:
        image = Image(path=path, registered_at=now, updated_at=now)
    changed: dict[str, Any] = {}
    for field in _IMAGE_POLICY_FIELDS:
        value = given[field]
        if value is not None and (created or getattr(image, field) != value):
            setattr(image, field, value)
            changed[field] = value
    if baseline is not None:
        image.baseline = baseline
        changed["baseline"] = "updated"  # the baseline itself is large; the audit says it changed
    image.updated_at = now
    session.add(image)
    session.flush()
    if created or changed:
        append_event(session, KIND_IMAGE_REGISTERED if created else KIND_IMAGE_UPDATED, path,
                     {"image_id": image.id, **changed}, actor, now=now)
    return image.model_dump()


_IN_CHUNK = 500  # values per IN (...) list: well under SQLite's 999 host parameters


def insert_images(session: Session, images: Sequence[Mapping[str, Any]], *, actor: str = "system",
                  now: datetime | None = None) -> list[dict[str, Any] | None]:
    """Register many new images at once: each mapping holds ``path`` and upsert_image's keyword
    arguments (None keeps the column's default). The rows and their ``image.registered`` events are the
    ones upsert_image would write one by one, with one SELECT, one multi-row INSERT and one
    append_events. A path already registered (or given twice) is left alone: None in its place, for
    the caller to upsert_image. Returns the new rows as dicts, in order."""
    now = _now(now)
    table = Image.__table__
    paths = [str(image["path"]) for image in images]
    taken: set[str] = set()
    for start in range(0, len(paths), _IN_CHUNK):
        taken.update(session.execute(sa.select(table.c.path).where(table.c.path.in_(paths[start:start + _IN_CHUNK]))).scalars())
    template = Image(path="", registered_at=now, updated_at=now).model_dump()  # the model's defaults (node too)
    del template["id"]
    rows: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    wanted: list[int | None] = []
    for image, path in zip(images, paths, strict=True):
        if path in taken:
            wanted.append(None)
            continue
        taken.add(path)
        interval = image.get("interval_s")
        if interval is not None and interval < 1:
            raise ValueError(f"interval_s must be ≥ 1, got {interval}")
        changed = {field: image[field] for field in _IMAGE_POLICY_FIELDS if image.get(field) is not None}
        row = {**template, **changed, "path": path}
        if image.get("baseline") is not None:
            row["baseline"] = image["baseline"]
            changed["baseline"] = "updated"  # as upsert_image: the audit says the baseline changed
        wanted.append(len(rows))
        rows.append(row)
        changes.append(changed)
    if not rows:
        return [None] * len(images)
    # RETURNING in any order (asking for parameter order makes SQLite insert row by row): the path names the row.
    ids = dict(session.connection().execute(sa.insert(table).returning(table.c.path, table.c.id), rows).all())
    append_events(session, [(KIND_IMAGE_REGISTERED, row["path"], {"image_id": ids[row["path"]], **changed}, actor)
                            for row, changed in zip(rows, changes, strict=True)], now=now)
    return [None if n is None else {"id": ids[rows[n]["path"]], **rows[n]} for n in wanted]


def set_image_flags(
    session: Session,
    image_id: int,
    *,
    marked_bad: bool | None = None,
    consecutive_heal_failures: int | None = None,
    auto_heal_enabled: bool | None = None,
    actor: str = "worker",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Update the healing status fields of an image (None keeps a field); audited when anything changes."""
    image = session.get(Image, image_id)
    if image is None:
        raise LookupError(f"image {image_id} is not registered")
    changed: dict[str, Any] = {}
    for field, value in (("marked_bad", marked_bad), ("consecutive_heal_failures", consecutive_heal_failures),
                         ("auto_heal_enabled", auto_heal_enabled)):
        if value is not None and getattr(image, field) != value:
            setattr(image, field, value)
            changed[field] = value
    if changed:
        image.updated_at = _now(now)
        session.add(image)
        session.flush()
        append_event(session, KIND_IMAGE_UPDATED, image.path, {"image_id": image.id, **changed}, actor, now=image.updated_at)
    return image.model_dump()


def get_image(session: Session, *, image_id: int | None = None, path: str | None = None) -> dict[str, Any] | None:
    """One registered image by id or path, or None."""
    if (image_id is None) == (path is None):
        raise ValueError("get_image needs exactly one of image_id or path")
    image = session.get(Image, image_id) if image_id is not None else session.exec(select(Image).where(Image.path == path)).first()
    return image.model_dump() if image is not None else None


def list_images_with_latest_status(session: Session) -> list[dict[str, Any]]:
    """Every registered image (by path) with its latest check's summary (None when never checked)."""
    i = Image.__table__.c
    c = Check.__table__.c
    query = (
        sa.select(
            i.id, i.path, i.name, i.critical, i.interval_s, i.golden_sha256, i.golden_path, i.baseline_path,
            i.auto_heal_enabled, i.marked_bad, i.consecutive_heal_failures, i.last_status, i.last_check_id,
            i.last_checked_at, i.registered_at, i.updated_at, i.node,
            c.confidence.label("last_confidence"), c.duration_ms.label("last_duration_ms"),
            c.reused_analysis.label("last_reused_analysis"), c.findings.label("last_findings"),
        )
        .select_from(Image.__table__.outerjoin(Check.__table__, c.id == i.last_check_id))
        .order_by(i.path)
    )
    rows = _rows(session.execute(query))
    for row in rows:
        findings = row.pop("last_findings")
        row["last_findings_count"] = len(findings) if isinstance(findings, list) else (None if findings is None else 0)
    return rows


def fleet_summary(session: Session) -> dict[str, int]:
    """Counts of registered images by last status, plus the total and how many are marked bad."""
    i = Image.__table__.c
    counts = dict.fromkeys(CHECK_STATUSES, 0)
    for status, n in session.execute(sa.select(i.last_status, sa.func.count()).group_by(i.last_status)):
        counts[status] = int(n)
    marked = session.execute(sa.select(sa.func.count()).where(i.marked_bad.is_(True))).scalar_one()
    return {**counts, "total": sum(counts.values()), "marked_bad": int(marked)}


# --------------------------------------------------------------------------- checks and heals

def record_check(
    session: Session,
    result: Mapping[str, Any],
    *,
    image_id: int | None = None,
    file_size: int | None = None,
    file_sha256: str | None = None,
    file_mtime_ns: int | None = None,
    reused_analysis: bool = False,
    actor: str = "worker",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store one check result (the `check --json` object) and update the image's status.

    image_id defaults to the registered image whose path equals result["image_path"] (None for an
    unregistered file, which is still recorded).
    """
    now = _now(now)
    status = str(result.get("status", "unknown"))
    _require(status, CHECK_STATUSES, "check status")
    image_path = str(result["image_path"])
    image = session.get(Image, image_id) if image_id is not None else session.exec(select(Image).where(Image.path == image_path)).first()
    if image_id is not None and image is None:
        raise LookupError(f"image {image_id} is not registered")
    findings = list(result.get("findings") or [])
    check = Check(
        image_id=image.id if image else None,
        image_path=image_path,
        status=status,
        confidence=float(result.get("confidence") or 0.0),
        metrics=dict(result.get("metrics") or {}),
        findings=findings,
        recommendation=result.get("recommendation"),
        duration_ms=float(result.get("duration_ms") or 0.0),
        file_size=file_size,
        file_sha256=file_sha256,
        file_mtime_ns=file_mtime_ns,
        reused_analysis=reused_analysis,
        created_at=now,
    )
    session.add(check)
    session.flush()
    if image is not None:
        image.last_status = status
        image.last_check_id = check.id
        image.last_checked_at = now
        session.add(image)
        session.flush()
    append_event(session, KIND_CHECK, image_path, {
        "check_id": check.id, "image_id": check.image_id, "status": status, "confidence": check.confidence,
        "file_sha256": file_sha256, "reused_analysis": reused_analysis, "findings": len(findings),
        "anomaly_score": check.metrics.get("anomaly_score") if check.metrics else None,
    }, actor, now=now)
    return check.model_dump()


def latest_check(session: Session, image_id: int) -> dict[str, Any] | None:
    """The newest check of an image (full row), or None."""
    check = session.exec(
        select(Check).where(Check.image_id == image_id).order_by(Check.created_at.desc(), Check.id.desc()).limit(1)
    ).first()
    return check.model_dump() if check is not None else None


def check_history(session: Session, image_id: int, *, since: datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """The newest ``limit`` checks of an image since ``since``, returned oldest first (chart order)."""
    c = Check.__table__.c
    query = sa.select(
        c.id, c.created_at, c.status, c.confidence, c.duration_ms, c.reused_analysis, c.file_sha256, c.metrics, c.findings,
    ).where(c.image_id == image_id)
    if since is not None:
        query = query.where(c.created_at >= _now(since))
    rows = _rows(session.execute(query.order_by(c.created_at.desc(), c.id.desc()).limit(limit)))
    rows.reverse()
    return rows


def check_history_frame(session: Session, image_id: int, *, since: datetime | None = None, limit: int = 500) -> pd.DataFrame:
    """check_history as a DataFrame for trend charts: created_at, status, confidence, duration_ms,
    anomaly_score, mean_entropy, findings (count), reused_analysis."""
    import pandas as pd

    records = [
        {
            "created_at": row["created_at"],
            "status": row["status"],
            "confidence": row["confidence"],
            "duration_ms": row["duration_ms"],
            "anomaly_score": (row["metrics"] or {}).get("anomaly_score"),
            "mean_entropy": (row["metrics"] or {}).get("mean_entropy"),
            "findings": len(row["findings"] or []),
            "reused_analysis": row["reused_analysis"],
        }
        for row in check_history(session, image_id, since=since, limit=limit)
    ]
    columns = ["created_at", "status", "confidence", "duration_ms", "anomaly_score", "mean_entropy", "findings", "reused_analysis"]
    return pd.DataFrame.from_records(records, columns=columns)


def record_heal(
    session: Session,
    *,
    image_path: str,
    action: str,
    outcome: str,
    image_id: int | None = None,
    check_id: int | None = None,
    source_path: str | None = None,
    quarantine_path: str | None = None,
    detail: dict[str, Any] | None = None,
    duration_ms: float = 0.0,
    actor: str = "worker",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store one healing action (e.g. action "restore", outcome "healed"/"failed"/"escalated")."""
    now = _now(now)
    if image_id is None:
        image = session.exec(select(Image).where(Image.path == image_path)).first()
        image_id = image.id if image is not None else None
    heal = Heal(image_id=image_id, check_id=check_id, image_path=image_path, action=action, outcome=outcome,
                source_path=source_path, quarantine_path=quarantine_path, detail=detail, duration_ms=duration_ms,
                created_at=now)
    session.add(heal)
    session.flush()
    append_event(session, KIND_HEAL, image_path, {
        "heal_id": heal.id, "image_id": image_id, "check_id": check_id, "action": action, "outcome": outcome,
        "source_path": source_path, "quarantine_path": quarantine_path, "detail": detail,
    }, actor, now=now)
    return heal.model_dump()


HEAL_STARTED = "started"


def finish_heal(
    session: Session,
    heal_id: int,
    *,
    outcome: str,
    detail: dict[str, Any] | None = None,
    duration_ms: float | None = None,
    actor: str = "worker",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Finish a heal recorded as "started": set its outcome, merge ``detail`` in, audit the result.

    Only a started heal can be finished (two processes reconciling the same row finish it once);
    raises LookupError otherwise."""
    heal = session.get(Heal, heal_id, with_for_update=True)
    if heal is None or heal.outcome != HEAL_STARTED:
        raise LookupError(f"heal {heal_id} is not an unfinished heal")
    heal.outcome = outcome
    heal.detail = {**(heal.detail or {}), **(detail or {})}
    if duration_ms is not None:
        heal.duration_ms = duration_ms
    session.add(heal)
    session.flush()
    append_event(session, KIND_HEAL, heal.image_path, {
        "heal_id": heal.id, "image_id": heal.image_id, "check_id": heal.check_id, "action": heal.action,
        "outcome": outcome, "source_path": heal.source_path, "quarantine_path": heal.quarantine_path,
        "detail": heal.detail,
    }, actor, now=_now(now))
    return heal.model_dump()


def unfinished_heals(session: Session) -> list[dict[str, Any]]:
    """Heals still recorded as "started", oldest first: in progress, or left by a process that died."""
    query = select(Heal).where(Heal.outcome == HEAL_STARTED).order_by(Heal.id)
    return [h.model_dump() for h in session.exec(query)]


def recent_heals(session: Session, *, image_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest healing actions, newest first (optionally of one image)."""
    query = select(Heal)
    if image_id is not None:
        query = query.where(Heal.image_id == image_id)
    return [h.model_dump() for h in session.exec(query.order_by(Heal.created_at.desc(), Heal.id.desc()).limit(limit))]


# --------------------------------------------------------------------------- alerts

def record_alert(
    session: Session,
    *,
    kind: str,
    severity: str,
    subject: str,
    message: str,
    reason: str | None = None,
    webhook: bool = False,
    actor: str = "worker",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store an alert; webhook=True marks it "pending" for the notifier to deliver."""
    _require(severity, ALERT_SEVERITIES, "alert severity")
    now = _now(now)
    alert = Alert(kind=kind, severity=severity, subject=subject, reason=reason, message=message, created_at=now,
                  webhook_state="pending" if webhook else "none")
    session.add(alert)
    session.flush()
    append_event(session, KIND_ALERT, subject, {
        "alert_id": alert.id, "kind": kind, "severity": severity, "reason": reason, "message": message,
    }, actor, now=now)
    return alert.model_dump()


def acknowledge_alert(session: Session, alert_id: int, *, by: str, now: datetime | None = None) -> dict[str, Any]:
    """Mark an alert acknowledged by an operator (idempotent; the first acknowledgement is kept)."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise LookupError(f"alert {alert_id} does not exist")
    if not alert.acknowledged:
        alert.acknowledged = True
        alert.acknowledged_by = by
        alert.acknowledged_at = _now(now)
        session.add(alert)
        session.flush()
        append_event(session, "alert.acknowledged", alert.subject, {"alert_id": alert.id}, by, now=alert.acknowledged_at)
    return alert.model_dump()


def mark_alert_delivery(
    session: Session, alert_id: int, *, delivered: bool, error: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Record one webhook delivery attempt: delivered, or failed with a one-line error."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise LookupError(f"alert {alert_id} does not exist")
    alert.webhook_attempts += 1
    if delivered:
        alert.webhook_state = "delivered"
        alert.webhook_delivered_at = _now(now)
        alert.webhook_last_error = None
    else:
        alert.webhook_state = "failed"
        alert.webhook_last_error = error
    session.add(alert)
    session.flush()
    return alert.model_dump()


def recent_alerts(session: Session, *, limit: int = 50, include_acknowledged: bool = True) -> list[dict[str, Any]]:
    """The newest alerts, newest first."""
    query = select(Alert)
    if not include_acknowledged:
        query = query.where(Alert.acknowledged.is_(False))
    return [a.model_dump() for a in session.exec(query.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit))]


ALERT_STATES = ("open", "acknowledged", "resolved", "info")


def alerts_with_state(session: Session, *, limit: int = 50, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The newest alerts, newest first, each with its lifecycle ``state`` and ``resolved_at``.

    An alert about a registered image (its subject is the image's path) is resolved by the first healthy
    check of that image after it was raised: no operator has to close it. Otherwise it is open until an
    operator acknowledges it. Info alerts are events and never wait for anyone (state "info").
    ``states`` keeps only those states (e.g. ("open",) for what still needs someone)."""
    a = Alert.__table__.c
    c = Check.__table__.c
    i = Image.__table__.c
    healed = (sa.select(sa.func.min(c.created_at)).select_from(Check.__table__.join(Image.__table__, c.image_id == i.id))
              .where(i.path == a.subject, c.status == "healthy", c.created_at > a.created_at)
              .correlate(Alert.__table__).scalar_subquery())
    state = sa.case((a.severity == "info", "info"), (healed.is_not(None), "resolved"),
                    (a.acknowledged.is_(True), "acknowledged"), else_="open")
    query = sa.select(Alert.__table__, sa.type_coerce(healed, c.created_at.type).label("resolved_at"), state.label("state"))
    if states is not None:
        query = query.where(state.in_(list(states)))
    return _rows(session.execute(query.order_by(a.created_at.desc(), a.id.desc()).limit(limit)))


def pending_webhook_alerts(session: Session, *, limit: int = 50) -> list[dict[str, Any]]:
    """Alerts still waiting for webhook delivery, oldest first."""
    query = select(Alert).where(Alert.webhook_state == "pending").order_by(Alert.created_at, Alert.id).limit(limit)
    return [a.model_dump() for a in session.exec(query)]


# --------------------------------------------------------------------------- audit reads

def audit_filters(kind: str | None, subject: str | None, start: datetime | None, end: datetime | None, *,
                  actor: str | None = None, subject_contains: bool = False,
                  exclude_kinds: Sequence[str] = ()) -> list[Any]:
    """WHERE clauses of an audit query (kind, subject, [start, end) in UTC); shared with the CSV export.

    ``subject_contains``: the subject matches anywhere in the event's subject (a file name finds the events
    of its full path; % and _ are literal); ``actor``: exactly that actor; ``exclude_kinds``: left out."""
    a = AuditEvent.__table__.c
    filters: list[Any] = []
    if kind:
        filters.append(a.kind == kind)
    if subject:
        filters.append(a.subject.contains(subject, autoescape=True) if subject_contains else a.subject == subject)
    if actor:
        filters.append(a.actor == actor)
    if exclude_kinds:
        filters.append(a.kind.not_in(list(exclude_kinds)))
    if start is not None:
        filters.append(a.created_at >= _now(start))
    if end is not None:
        filters.append(a.created_at < _now(end))
    return filters


def audit_page(
    session: Session,
    *,
    kind: str | None = None,
    subject: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    offset: int = 0,
    limit: int = 50,
    **more: Any,
) -> list[dict[str, Any]]:
    """One page of audit events, newest first by sequence number (a timestamp is taken before the
    sequence is assigned, so time order can differ); ``end`` is exclusive; payload decoded to a dict.
    ``more``: audit_filters' keyword filters (actor, subject_contains, exclude_kinds)."""
    a = AuditEvent.__table__.c
    query = (
        sa.select(a.id, a.seq, a.created_at, a.kind, a.subject, a.actor, a.payload, a.prev_hash, a.hash)
        .where(*audit_filters(kind, subject, start, end, **more))
        .order_by(a.seq.desc(), a.id.desc())
        .offset(max(0, offset))
        .limit(max(0, limit))
    )
    rows = _rows(session.execute(query))
    for row in rows:
        row["payload"] = json.loads(row["payload"])
    return rows


def audit_count(
    session: Session,
    *,
    kind: str | None = None,
    subject: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    **more: Any,
) -> int:
    """How many audit events match the same filters as audit_page."""
    a = AuditEvent.__table__.c
    query = sa.select(sa.func.count(a.id)).where(*audit_filters(kind, subject, start, end, **more))
    return int(session.execute(query).scalar_one())


def audit_kinds(session: Session) -> list[str]:
    """The distinct audit event kinds present, sorted (for a filter drop-down)."""
    a = AuditEvent.__table__.c
    return [row[0] for row in session.execute(sa.select(a.kind).distinct().order_by(a.kind))]


# --------------------------------------------------------------------------- run-now requests

def enqueue_request(
    session: Session, kind: str, target: str, *, requested_by: str, now: datetime | None = None
) -> dict[str, Any]:
    """Queue a "run now" request (check|heal|accept_change|tune) for the worker."""
    _require(kind, REQUEST_KINDS, "request kind")
    now = _now(now)
    request = RunRequest(kind=kind, target=target, requested_by=requested_by, status="pending", created_at=now)
    session.add(request)
    session.flush()
    append_event(session, KIND_REQUEST_ENQUEUED, target, {"request_id": request.id, "kind": kind}, requested_by, now=now)
    return request.model_dump()


def claim_next_request(
    session: Session, worker_id: str, *, kinds: Sequence[str] | None = None, now: datetime | None = None
) -> dict[str, Any] | None:
    """Atomically take the oldest pending request (status → running) or return None.

    Safe with several claimers: the write session's BEGIN IMMEDIATE on SQLite, FOR UPDATE SKIP
    LOCKED on PostgreSQL.
    """
    query = select(RunRequest).where(RunRequest.status == "pending")
    if kinds:
        query = query.where(RunRequest.kind.in_(list(kinds)))
    query = query.order_by(RunRequest.created_at, RunRequest.id).limit(1).with_for_update(skip_locked=True)
    request = session.exec(query.execution_options(populate_existing=True)).first()
    if request is None:
        return None
    request.status = "running"
    request.claimed_by = worker_id
    request.started_at = _now(now)
    session.add(request)
    session.flush()
    return request.model_dump()


def finish_request(
    session: Session, request_id: int, *, ok: bool, result: dict[str, Any] | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Close a request as done (ok) or failed, with a JSON result for the dashboard."""
    request = session.get(RunRequest, request_id)
    if request is None:
        raise LookupError(f"request {request_id} does not exist")
    request.status = "done" if ok else "failed"
    request.result = result
    request.finished_at = _now(now)
    session.add(request)
    session.flush()
    append_event(session, KIND_REQUEST_FINISHED, request.target, {
        "request_id": request.id, "kind": request.kind, "status": request.status, "result": result,
    }, request.claimed_by or "worker", now=request.finished_at)
    return request.model_dump()


def pending_requests(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    """Requests not finished yet (pending, then running), oldest first."""
    query = (
        select(RunRequest)
        .where(RunRequest.status.in_(["pending", "running"]))
        .order_by(RunRequest.created_at, RunRequest.id)
        .limit(limit)
    )
    return [r.model_dump() for r in session.exec(query)]


# --------------------------------------------------------------------------- worker heartbeat

def beat_heartbeat(
    session: Session,
    worker_id: str,
    *,
    pid: int,
    host: str,
    state: str = "running",
    info: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Insert or refresh a worker's heartbeat; state "starting" (re)sets started_at."""
    _require(state, WORKER_STATES, "worker state")
    now = _now(now)
    beat = session.get(WorkerHeartbeat, worker_id)
    if beat is None:
        beat = WorkerHeartbeat(worker_id=worker_id, pid=pid, host=host, started_at=now, last_beat=now, state=state)
    elif state == "starting" or beat.pid != pid:
        beat.started_at = now
    beat.pid, beat.host, beat.state, beat.last_beat = pid, host, state, now
    if info is not None:
        beat.info = info
    session.add(beat)
    session.flush()
    return beat.model_dump()


def worker_heartbeat(session: Session, *, now: datetime | None = None) -> dict[str, Any] | None:
    """The most recent heartbeat of any worker, with age_s (seconds since last_beat), or None."""
    beat = session.exec(select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_beat.desc()).limit(1)).first()
    if beat is None:
        return None
    data = beat.model_dump()
    data["age_s"] = max(0.0, (_now(now) - beat.last_beat).total_seconds())
    return data


# --------------------------------------------------------------------------- promotions

def list_promotions(session: Session, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Promotions newest first, optionally only one status (e.g. "pending_review" for the queue)."""
    query = select(Promotion)
    if status is not None:
        query = query.where(Promotion.status == status)
    return [p.model_dump() for p in session.exec(query.order_by(Promotion.created_at.desc(), Promotion.id.desc()).limit(limit))]
