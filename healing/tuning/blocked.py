"""Nothing silent: a failure the tuning loop sees but may not act on is stored and alerted once.

Two things block the loop: the Observer's cooldown (the same class of the same subsystem fired within
``tuning.observer.cooldown_seconds``: the failure repeats while the first intent is handled) and the
rate limits (runs in the window, cooldown between runs, backoff after failures). Without this module
such a failure would only be "suppressed" or archived RATE_LIMITED. :func:`note_blocked` stores it in
``tuning_blocked`` — one row per episode: repeats of the same (subsystem, class, cause) before the
episode ends raise ``count`` and ``last_seen`` — and raises one warning alert ``tuning_blocked`` per
episode, so an operator sees that the loop is blocked, why, and until when (``selfheal tune status``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlmodel import Session

ALERT_KIND = "tuning_blocked"


def note_blocked(session: Session, *, subsystem: str, error_class: str, cause: str, reason: str,
                 until: datetime | None, webhook: bool, actor: str, now: datetime) -> dict[str, Any]:
    """Store (or count) a blocked failure; the first of an episode also gets an alert. Returns the row
    with ``new`` (first of its episode) and ``alert_id`` (set on the first only)."""
    from storage import queries
    from storage import tuning_queries as tq

    row, new = tq.record_blocked(session, subsystem=subsystem, error_class=error_class, cause=cause, reason=reason,
                                 until=until, actor=actor, now=now)
    if new:
        when = f" until {until:%Y-%m-%d %H:%M} UTC" if until is not None else ""
        what = ("seen again during the Observer cooldown" if cause == "cooldown"
                else "seen while tuning is rate limited")
        alert = queries.record_alert(
            session, kind=ALERT_KIND, severity="warning", subject=f"{subsystem}: {error_class}", reason=cause,
            message=f"{error_class} {what}: the tuning loop will not act on it{when} ({reason}); "
                    "repeats are counted in tune status, not alerted again",
            webhook=webhook, actor=actor, now=now)
        tq.set_blocked_alert(session, int(row["id"]), int(alert["id"]))
        row["alert_id"] = int(alert["id"])
    return {**row, "new": new}
