"""Transactional rate limits for tuning runs (DESIGN.md §5: 3 runs/24 h, 6 h cooldown, backoff).

Public API
  RateLimits(max_runs=3, window_s=86400, cooldown_s=21600, backoff_base_s=21600,
             backoff_factor=2.0, backoff_max_s=172800)
      .backoff_for(consecutive_failures) -> seconds
  rate_limit_state(session, subsystem, limits, now=None) -> RateLimitState
      runs_used (started within the window), cooldown_left_s, consecutive_failures, backoff_s,
      backoff_left_s, next_allowed_at, allowed, reason — a read, usable in any session.
  claim_run_slot(session, subsystem, limits, now=None, *, intent_id=None, mode="prod", actor="tuning")
      -> SlotClaim(granted, run_id, state)
      Decides and, when granted, inserts the tuning_runs row (status "running") in the same
      transaction, under a lock: on SQLite the write session's BEGIN IMMEDIATE, on PostgreSQL
      SELECT … FOR UPDATE on the subsystem's tuning_rate_limits row. Concurrent claimers are thus
      serialised and can never exceed the limits. The claim's time is read under that lock and is
      never earlier than the subsystem's previous claim (a late claimer, or a lagging clock on another
      worker host, cannot miss a run). Both grants and refusals are audited.
  finish_run(session, run_id, status, *, decision=None, reason=None, baseline_score=None, now=None) -> dict
      status "succeeded" or "failed"; failures feed the backoff.

The state is derived from tuning_runs (nothing to drift out of sync):
  * window: a run counts while started_at > now - window_s; with max_runs used, the next slot opens
    when the oldest of them leaves the window;
  * cooldown: cooldown_s after the latest run's start;
  * backoff: after k ≥ 1 consecutive failed runs (newest finished runs, up to the latest success),
    backoff_base_s · backoff_factor^(k-1), capped at backoff_max_s, after the latest failure finished.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from storage.audit import KIND_RUN_CLAIMED, KIND_RUN_REFUSED, append_event
from storage.engine import is_write_session
from storage.models import RUN_STATUSES, TuningRateLimit, TuningRun, utcnow


@dataclass(frozen=True)
class RateLimits:
    """Limits for one subsystem; the tuning settings build this from the `tuning` section."""

    max_runs: int = 3
    window_s: float = 24 * 3600
    cooldown_s: float = 6 * 3600
    backoff_base_s: float = 6 * 3600
    backoff_factor: float = 2.0
    backoff_max_s: float = 48 * 3600

    def __post_init__(self) -> None:
        if self.max_runs < 0 or self.window_s <= 0 or self.cooldown_s < 0:
            raise ValueError("rate limits: max_runs ≥ 0, window_s > 0 and cooldown_s ≥ 0 are required")
        if self.backoff_base_s < 0 or self.backoff_factor < 1 or self.backoff_max_s < 0:
            raise ValueError("rate limits: backoff_base_s ≥ 0, backoff_factor ≥ 1 and backoff_max_s ≥ 0 are required")

    def backoff_for(self, consecutive_failures: int) -> float:
        """Seconds to wait after the latest failure, given the number of consecutive failures."""
        if consecutive_failures <= 0:
            return 0.0
        # Cap the exponent first so a long failure streak cannot overflow the float.
        exponent = min(consecutive_failures - 1, 64)
        return float(min(self.backoff_max_s, self.backoff_base_s * self.backoff_factor**exponent))


@dataclass(frozen=True)
class RateLimitState:
    """Where one subsystem stands against its limits at ``now`` (plain data for the dashboard)."""

    subsystem: str
    now: datetime
    runs_used: int
    max_runs: int
    window_s: float
    cooldown_left_s: float
    consecutive_failures: int
    backoff_s: float
    backoff_left_s: float
    next_allowed_at: datetime
    allowed: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SlotClaim:
    """Result of claim_run_slot: the run row's id when granted; the state the decision was based on."""

    granted: bool
    run_id: int | None
    state: RateLimitState


def _aware(moment: datetime | None) -> datetime:
    moment = moment or utcnow()
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def rate_limit_state(session: Session, subsystem: str, limits: RateLimits, now: datetime | None = None) -> RateLimitState:
    """Compute the subsystem's rate-limit state from its runs (see the module docstring)."""
    now = _aware(now)
    runs = TuningRun.__table__.c
    window_start = now - timedelta(seconds=limits.window_s)
    starts = [
        row[0]
        for row in session.execute(
            sa.select(runs.started_at)
            .where(runs.subsystem == subsystem, runs.started_at > window_start, runs.started_at <= now)
            .order_by(runs.started_at)
        )
    ]
    runs_used = len(starts)
    window_until = now
    if runs_used >= limits.max_runs:
        # The slot that frees first belongs to the run that makes the count exceed max_runs - 1.
        window_until = starts[runs_used - limits.max_runs] + timedelta(seconds=limits.window_s) if limits.max_runs else datetime.max.replace(tzinfo=UTC)

    last_start = session.execute(
        sa.select(runs.started_at)
        .where(runs.subsystem == subsystem, runs.started_at <= now)
        .order_by(runs.started_at.desc())
        .limit(1)
    ).scalar()
    cooldown_until = last_start + timedelta(seconds=limits.cooldown_s) if last_start else now

    failures = 0
    last_failure_at: datetime | None = None
    finished = session.execute(
        sa.select(runs.status, runs.finished_at, runs.started_at)
        .where(runs.subsystem == subsystem, runs.status != "running", runs.started_at <= now)
        .order_by(runs.started_at.desc(), runs.id.desc())
        .limit(64)
    )
    for status, finished_at, started_at in finished:
        if status != "failed":
            break
        failures += 1
        if last_failure_at is None:
            last_failure_at = finished_at or started_at
    backoff_s = limits.backoff_for(failures)
    backoff_until = last_failure_at + timedelta(seconds=backoff_s) if last_failure_at else now

    next_allowed = max(now, window_until, cooldown_until, backoff_until)
    cooldown_left = max(0.0, (cooldown_until - now).total_seconds())
    backoff_left = max(0.0, (backoff_until - now).total_seconds())
    if runs_used >= limits.max_runs:
        reason = f"{runs_used}/{limits.max_runs} runs used in the last {_duration(limits.window_s)}; next slot in {_duration((window_until - now).total_seconds())}"
    elif cooldown_left > 0:
        reason = f"cooldown: {_duration(cooldown_left)} left after the run started at {last_start:%Y-%m-%d %H:%M} UTC"
    elif backoff_left > 0:
        reason = f"backoff after {failures} consecutive failed run(s): {_duration(backoff_left)} left"
    else:
        reason = f"allowed: {runs_used}/{limits.max_runs} runs used in the last {_duration(limits.window_s)}"
    return RateLimitState(
        subsystem=subsystem, now=now, runs_used=runs_used, max_runs=limits.max_runs, window_s=limits.window_s,
        cooldown_left_s=cooldown_left, consecutive_failures=failures, backoff_s=backoff_s, backoff_left_s=backoff_left,
        next_allowed_at=next_allowed, allowed=next_allowed <= now, reason=reason,
    )


def _lock_subsystem(session: Session, subsystem: str) -> TuningRateLimit:
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(
        insert(TuningRateLimit).values(subsystem=subsystem, claims_granted=0, claims_refused=0).on_conflict_do_nothing()
    )
    query = select(TuningRateLimit).where(TuningRateLimit.subsystem == subsystem).with_for_update()
    return session.exec(query.execution_options(populate_existing=True)).one()


def claim_run_slot(
    session: Session,
    subsystem: str,
    limits: RateLimits,
    now: datetime | None = None,
    *,
    intent_id: int | None = None,
    mode: str = "prod",
    actor: str = "tuning",
) -> SlotClaim:
    """Atomically decide whether a run may start now and, if so, create it (status "running")."""
    if not is_write_session(session):
        raise RuntimeError("claim_run_slot needs a write session (storage.engine.session_scope(write=True))")
    anchor = _lock_subsystem(session, subsystem)
    # The claim's time is taken under the lock and never goes back behind the subsystem's previous claim:
    # a claimer whose ``now`` was read before it waited for the lock must still count the runs granted
    # meanwhile (their started_at is later than its ``now``), and so must a worker whose clock lags
    # another's on a shared PostgreSQL database.
    now = _aware(now)
    if anchor.last_claim_at is not None:
        now = max(now, _aware(anchor.last_claim_at))
    state = rate_limit_state(session, subsystem, limits, now)
    anchor.last_claim_at = now
    if not state.allowed:
        anchor.claims_refused += 1
        session.add(anchor)
        append_event(session, KIND_RUN_REFUSED, subsystem,
                     {"reason": state.reason, "intent_id": intent_id, "next_allowed_at": state.next_allowed_at},
                     actor, now=now)
        return SlotClaim(False, None, state)
    run = TuningRun(intent_id=intent_id, subsystem=subsystem, mode=mode, status="running", started_at=now)
    session.add(run)
    anchor.claims_granted += 1
    session.add(anchor)
    session.flush()
    append_event(session, KIND_RUN_CLAIMED, subsystem,
                 {"run_id": run.id, "intent_id": intent_id, "mode": mode, "runs_used": state.runs_used + 1},
                 actor, now=now)
    return SlotClaim(True, run.id, state)


def finish_run(
    session: Session,
    run_id: int,
    status: str,
    *,
    decision: str | None = None,
    reason: str | None = None,
    baseline_score: float | None = None,
    now: datetime | None = None,
    actor: str = "tuning",
) -> dict[str, Any]:
    """Close a run as "succeeded" or "failed" (failures drive the backoff) and audit it."""
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"finish_run: status must be 'succeeded' or 'failed', got {status!r}")
    run = session.get(TuningRun, run_id)
    if run is None:
        raise LookupError(f"tuning run {run_id} does not exist")
    run.status = status
    run.finished_at = _aware(now)
    run.decision = decision
    run.reason = reason
    if baseline_score is not None:
        run.baseline_score = baseline_score
    session.add(run)
    session.flush()
    append_event(session, "tuning.run_finished", run.subsystem,
                 {"run_id": run.id, "status": status, "decision": decision, "reason": reason}, actor, now=run.finished_at)
    return run.model_dump()
