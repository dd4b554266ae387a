"""Operator decisions and "run now" requests, written as rows that the worker acts on.

The dashboard never heals, checks or applies anything itself (DESIGN.md §3): it records what the
operator asked for, in a short write transaction together with its audit event, and the worker
carries it out.

  request_run(kind, target, operator)      check | heal | accept_change → a run_requests row
  decide_promotion(id, approve, operator)  pending_review → approved | rejected (+ audit event)
  acknowledge_alert(id, operator)

``decide_promotion`` is the decision as data: the worker's promotion job applies "approved" rows
(→ applied/failed) and expires stale "pending_review" rows. Every function returns plain data and
raises :class:`ActionRefused` with one operator line when the decision is not possible.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import select

from storage import queries
from storage.engine import session_scope
from storage.models import Image, Promotion, RunRequest, utcnow

IMAGE_REQUEST_KINDS = ("check", "heal", "accept_change")
KIND_PROMOTION_APPROVED = "promotion.approved"
KIND_PROMOTION_REJECTED = "promotion.rejected"


class ActionRefused(Exception):
    """The operator's request cannot be carried out; the message is one line for the page."""


def request_run(kind: str, target: str, operator: str, *, url: str | None = None,
                now: datetime | None = None) -> dict[str, Any]:
    """Queue a check, heal or accept_change of a registered image for the worker.

    A request of the same kind for the same image that is still pending is returned instead of a
    second one (double clicks and impatient operators must not queue duplicate heals).
    The returned dict has the request row plus ``"duplicate": bool``.
    """
    if kind not in IMAGE_REQUEST_KINDS:
        raise ActionRefused(f"unknown request kind {kind!r} (expected one of {', '.join(IMAGE_REQUEST_KINDS)})")
    with session_scope(url) as session:
        if session.exec(select(Image.id).where(Image.path == target)).first() is None:
            raise ActionRefused(f"{target} is not a registered image")
        existing = session.exec(
            select(RunRequest).where(RunRequest.kind == kind, RunRequest.target == target, RunRequest.status == "pending")
        ).first()
        if existing is not None:
            return {**existing.model_dump(), "duplicate": True}
        row = queries.enqueue_request(session, kind, target, requested_by=operator, now=now)
        return {**row, "duplicate": False}


def decide_promotion(promotion_id: int, approve: bool, operator: str, *, reason: str | None = None,
                     url: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Approve or reject a promotion waiting for review, and audit the decision with the operator's name.

    Approval is carried out by the tuning package (healing.tuning.promotions): the new values are
    written to the target config file with a backup and the reload command runs, so the returned row
    is ``applied`` (or ``failed`` with the reason). Refused when the promotion does not exist, was
    already decided (by someone else, perhaps a second browser tab), or has expired. Everything runs
    in one write transaction (BEGIN IMMEDIATE on SQLite), so two operators deciding at once cannot both win.
    """
    from healing.errors import SelfHealError
    from healing.tuning.promotions import approve_promotion, reject_promotion

    now = now or utcnow()
    reason = " ".join((reason or "").split()) or None
    with session_scope(url) as session:
        promotion = session.get(Promotion, promotion_id)
        if promotion is None:
            raise ActionRefused(f"promotion {promotion_id} does not exist")
        if promotion.status != "pending_review":
            decided = f" by {promotion.decided_by}" if promotion.decided_by else ""
            raise ActionRefused(f"promotion {promotion_id} is already {promotion.status}{decided}")
        if promotion.expires_at is not None and promotion.expires_at <= now:
            raise ActionRefused(f"promotion {promotion_id} expired at {promotion.expires_at:%Y-%m-%d %H:%M} UTC; "
                                "the next tuning run will propose it again if it is still needed")
        try:
            if approve:
                if reason:  # the operator's note becomes the promotion's reason, audited with the approval
                    promotion.reason = reason
                    session.add(promotion)
                    session.flush()
                return approve_promotion(session, promotion_id, operator, now=now)
            return reject_promotion(session, promotion_id, operator, reason=reason, now=now)
        except SelfHealError as exc:
            raise ActionRefused(str(exc)) from None


def acknowledge_alert(alert_id: int, operator: str, *, url: str | None = None) -> dict[str, Any]:
    """Mark an alert acknowledged by the operator (audited by storage)."""
    with session_scope(url) as session:
        try:
            return queries.acknowledge_alert(session, alert_id, by=operator)
        except LookupError as exc:
            raise ActionRefused(str(exc)) from None
