"""Small queries the image worker needs that storage.queries does not offer (plain data out).

  fail_abandoned_requests(session, *, claimed_by=None, reason, now) -> int
      Requests left "running" by a worker that died (kill -9, power loss) are closed as failed with
      ``reason``, so the dashboard does not show them running forever. Audited like finish_request.
  image_schedule(session, *, node=None) -> list[dict]
      id, path and interval_s of every registered image (of one node): what the scheduler needs to sync its jobs.
  images_due(session, *, now=None, due_only=True, ids=None, node=None) -> list[dict]
      One read for a check cycle: each image (policy columns) with its latest check's result columns
      (``last_*``, None when never checked; metrics and findings as their JSON text, ``last_metrics_json``
      and ``last_findings_json``, decoded only where needed: most images of a cycle never need them), by path. ``due_only``: only images never checked or whose
      last check is at least interval_s old. Further filters (a node) are one more WHERE here.
  record_reused_checks(session, checks, *, actor, now=None) -> list[int]
      The checks of unchanged images (reused analysis) of one cycle batch: check rows, image status
      and their audit events in the caller's one transaction. Returns the new check ids, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from storage.audit import KIND_CHECK, append_events
from storage.models import Check, Image, RunRequest
from storage.queries import finish_request


def fail_abandoned_requests(session: Session, *, claimed_by: str | None = None, reason: str,
                            now: datetime | None = None) -> int:
    """Close requests stuck in "running" (optionally only those of one worker id) as failed."""
    query = select(RunRequest.id).where(RunRequest.status == "running")
    if claimed_by is not None:
        query = query.where(RunRequest.claimed_by == claimed_by)
    ids = list(session.exec(query))
    for request_id in ids:
        finish_request(session, request_id, ok=False, result={"error": reason}, now=now)
    return len(ids)


def image_schedule(session: Session, *, node: str | None = None) -> list[dict[str, Any]]:
    """(id, path, interval_s) of every registered image (only ``node``'s when given), by id."""
    query = select(Image.id, Image.path, Image.interval_s).order_by(Image.id)
    rows = session.exec(query.where(Image.node == node) if node is not None else query)
    return [{"id": i, "path": p, "interval_s": s} for i, p, s in rows]


_LAST_CHECK_COLUMNS = ("status", "confidence", "recommendation", "file_size", "file_sha256")
_LAST_CHECK_JSON = ("metrics", "findings")


def _due(now: datetime, dialect: str) -> Any:
    """SQL for "never checked, or last checked at least interval_s seconds before ``now``"."""
    i = Image.__table__.c
    if dialect == "postgresql":
        ready = i.last_checked_at + sa.func.make_interval(0, 0, 0, 0, 0, 0, i.interval_s) <= now
    else:  # SQLite keeps naive UTC text (storage.models.UTCDateTime)
        text = now.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        ready = sa.func.julianday(i.last_checked_at) + i.interval_s / 86400.0 <= sa.func.julianday(text)
    return sa.or_(i.last_checked_at.is_(None), ready)


def images_due(session: Session, *, now: datetime | None = None, due_only: bool = True,
               ids: Sequence[int] | None = None, node: str | None = None) -> list[dict[str, Any]]:
    """Images to check in this cycle with their latest check (see the module docstring), by path;
    only those of ``node`` when given (storage.nodes)."""
    i = Image.__table__.c
    c = Check.__table__.c
    query = (
        sa.select(i.id, i.path, i.interval_s, i.golden_sha256, i.last_check_id, i.last_checked_at, i.updated_at,
                  *(getattr(c, name).label(f"last_{name}") for name in _LAST_CHECK_COLUMNS),
                  *(sa.cast(getattr(c, name), sa.Text).label(f"last_{name}_json") for name in _LAST_CHECK_JSON))
        .select_from(Image.__table__.outerjoin(Check.__table__, c.id == i.last_check_id))
        .order_by(i.path)
    )
    if due_only:
        query = query.where(_due(now or datetime.now(UTC), session.connection().dialect.name))
    if ids is not None:
        query = query.where(i.id.in_(list(ids)))
    if node is not None:
        query = query.where(i.node == node)
    result = session.execute(query)
    keys = list(result.keys())  # dict(zip) per row: RowMapping's dict() asks for the keys again each row
    return [dict(zip(keys, row, strict=True)) for row in result]


def record_reused_checks(session: Session, checks: Sequence[dict[str, Any]], *, actor: str,
                         now: datetime | None = None) -> list[int]:
    """Store reused-analysis checks (each: image_id, image_path, status, confidence, metrics, findings,
    recommendation, duration_ms, file_size, file_sha256, file_mtime_ns) like queries.record_check
    would one by one: the check row, the image's last_status/last_check_id/last_checked_at, one
    ``check`` audit event each (same payload), all in the caller's transaction."""
    if not checks:
        return []
    if len({ch["image_id"] for ch in checks}) != len(checks):
        raise ValueError("record_reused_checks: an image may appear only once per batch")
    now = now or datetime.now(UTC)
    connection = session.connection()
    table = Check.__table__
    rows = [{"image_id": ch["image_id"], "image_path": ch["image_path"], "status": ch["status"],
             "confidence": float(ch.get("confidence") or 0.0), "metrics": dict(ch.get("metrics") or {}),
             "findings": list(ch.get("findings") or []), "recommendation": ch.get("recommendation"),
             "duration_ms": float(ch.get("duration_ms") or 0.0), "file_size": ch.get("file_size"),
             "file_sha256": ch.get("file_sha256"), "file_mtime_ns": ch.get("file_mtime_ns"), "reused_analysis": True,
             "created_at": now} for ch in checks]
    # RETURNING in any order (asking for parameter order makes SQLite insert row by row); an image appears
    # once per batch, so its id names its check.
    by_image = {r[0]: r[1] for r in connection.execute(sa.insert(table).returning(table.c.image_id, table.c.id), rows)}
    ids = [by_image[r["image_id"]] for r in rows]
    images = Image.__table__
    connection.execute(
        sa.update(images).where(images.c.id == sa.bindparam("b_id"))
        .values(last_status=sa.bindparam("b_status"), last_check_id=sa.bindparam("b_check"), last_checked_at=now),
        [{"b_id": r["image_id"], "b_status": r["status"], "b_check": check_id} for r, check_id in zip(rows, ids, strict=True)])
    append_events(session, [(KIND_CHECK, r["image_path"], {
        "check_id": check_id, "image_id": r["image_id"], "status": r["status"], "confidence": r["confidence"],
        "file_sha256": r["file_sha256"], "reused_analysis": True, "findings": len(r["findings"]),
        "anomaly_score": r["metrics"].get("anomaly_score") if r["metrics"] else None,
    }, actor) for r, check_id in zip(rows, ids, strict=True)], now=now)
    return ids
