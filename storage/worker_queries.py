"""Small queries the image worker needs that storage.queries does not offer (plain data out).

  fail_abandoned_requests(session, *, claimed_by=None, reason, now) -> int
      Requests left "running" by a worker that died (kill -9, power loss) are closed as failed with
      ``reason``, so the dashboard does not show them running forever. Audited like finish_request.
  image_schedule(session) -> list[dict]
      id, path and interval_s of every registered image: what the scheduler needs to sync its jobs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from storage.models import Image, RunRequest
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


def image_schedule(session: Session) -> list[dict[str, Any]]:
    """(id, path, interval_s) of every registered image, by id."""
    rows = session.exec(select(Image.id, Image.path, Image.interval_s).order_by(Image.id))
    return [{"id": i, "path": p, "interval_s": s} for i, p, s in rows]
