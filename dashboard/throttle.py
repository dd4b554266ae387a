"""Login throttling shared by every browser session and dashboard process, kept in the database.

Failures are counted per operator name (case-folded) AND per client address (``login_attempts``
rows), so neither fresh browser sessions nor a new name per guess escape the count:

  * a failure within ``login_window_s`` of the previous one continues the streak, an older one starts
    a new streak at 1;
  * at ``login_max_failures`` failures in a streak the key is locked for ``login_lock_s``; every
    further failure after a lock doubles it (``login_lock_s × 2ⁿ``), capped at ``login_lock_max_s``;
  * while either key is locked every attempt is refused *before the password is compared*, the right
    password included, and the refusal is audited (``auth.locked``); a refused attempt does not extend
    the lock (otherwise anyone could keep an operator locked out for ever at no cost);
  * the failure is counted *before* the comparison, in one write transaction with both rows locked
    (BEGIN IMMEDIATE on SQLite, SELECT … FOR UPDATE on PostgreSQL), so parallel guesses from many
    sessions cannot all slip in before the count moves; a success then clears both streaks.

Audit events: ``auth.success``, ``auth.failure`` (with the streak counts and, when it started one, the
lock), ``auth.locked`` (an attempt refused while locked), ``auth.logout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from storage.audit import append_event
from storage.engine import session_scope
from storage.models import LoginAttempt, utcnow

KIND_SUCCESS = "auth.success"
KIND_FAILURE = "auth.failure"
KIND_LOCKED = "auth.locked"
KIND_LOGOUT = "auth.logout"
AUDIT_ACTOR = "dashboard"
MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures: int = 5
    window_s: float = 900.0
    lock_s: float = 60.0
    lock_max_s: float = 3600.0

    def lock_for(self, failures: int) -> float:
        """Seconds a key is locked after its ``failures``-th failure in a streak (0: not locked)."""
        if failures < self.max_failures:
            return 0.0
        # min() before the power would not help: 2 ** 5000 is a valid int but a float overflow.
        exponent = min(failures - self.max_failures, 64)
        return min(self.lock_max_s, self.lock_s * 2.0 ** exponent)


@dataclass(frozen=True)
class Admission:
    """Whether an attempt may compare its password; when not, for how long the lock lasts."""

    allowed: bool
    retry_after_s: float = 0.0
    locked: tuple[str, ...] = ()  # the scopes that are locked ("operator", "client")


def operator_key(name: str) -> str:
    return name.casefold()[:MAX_KEY_CHARS]


def _rows(session: Session, keys: dict[str, str]) -> dict[str, LoginAttempt]:
    """The rows of both keys, created when missing, locked for this transaction."""
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    now = utcnow()
    for scope, key in keys.items():
        session.execute(insert(LoginAttempt).values(scope=scope, key=key, failures=0, updated_at=now)
                        .on_conflict_do_nothing())
    found: dict[str, LoginAttempt] = {}
    for scope, key in keys.items():
        row = session.exec(select(LoginAttempt).where(LoginAttempt.scope == scope, LoginAttempt.key == key)
                           .with_for_update().execution_options(populate_existing=True)).one()
        found[scope] = row
    return found


def _keys(operator: str, client: str) -> dict[str, str]:
    return {"operator": operator_key(operator), "client": client[:MAX_KEY_CHARS]}


def begin_attempt(operator: str, client: str, policy: ThrottlePolicy, *, url: str | None = None,
                  now: datetime | None = None) -> Admission:
    """Refuse the attempt while either key is locked; otherwise count it as a failure in advance."""
    now = now or utcnow()
    with session_scope(url) as session:
        rows = _rows(session, _keys(operator, client))
        locked = {scope: row.locked_until for scope, row in rows.items()
                  if row.locked_until is not None and row.locked_until > now}
        if locked:
            until = max(locked.values())
            retry = (until - now).total_seconds()
            append_event(session, KIND_LOCKED, operator, {
                "client": client, "locked": sorted(locked), "locked_until": until.isoformat(),
                "retry_after_s": round(retry, 1)}, actor=AUDIT_ACTOR, now=now)
            return Admission(False, retry, tuple(sorted(locked)))
        window = timedelta(seconds=policy.window_s)
        for row in rows.values():
            if row.last_failure_at is None or now - row.last_failure_at > window:
                row.failures = 0  # the previous streak is over
            row.failures += 1
            row.last_failure_at = now
            lock = policy.lock_for(row.failures)
            row.locked_until = now + timedelta(seconds=lock) if lock else None
            row.updated_at = now
            session.add(row)
        return Admission(True)


def finish_attempt(operator: str, client: str, success: bool, *, url: str | None = None,
                   now: datetime | None = None) -> dict[str, Any]:
    """Clear both streaks after a success; audit the outcome. Returns the audited payload."""
    now = now or utcnow()
    with session_scope(url) as session:
        rows = _rows(session, _keys(operator, client))
        if success:
            for row in rows.values():
                row.failures, row.last_failure_at, row.locked_until, row.updated_at = 0, None, None, now
                session.add(row)
            payload: dict[str, Any] = {"client": client}
            append_event(session, KIND_SUCCESS, operator, payload, actor=operator, now=now)
            return payload
        payload = {"client": client, "failures": {scope: row.failures for scope, row in rows.items()}}
        locks = [row.locked_until for row in rows.values() if row.locked_until is not None and row.locked_until > now]
        if locks:
            payload["locked_until"] = max(locks).isoformat()
        append_event(session, KIND_FAILURE, operator, payload, actor=AUDIT_ACTOR, now=now)
        return payload


def record_logout(operator: str, client: str, *, url: str | None = None) -> None:
    with session_scope(url) as session:
        append_event(session, KIND_LOGOUT, operator, {"client": client}, actor=operator)
