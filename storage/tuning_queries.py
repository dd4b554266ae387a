"""Plain query functions for config tuning: intents, candidates, promotions (sessions in, dicts out).

Like storage.queries: every function takes an open ``session`` and returns dicts (never live ORM
objects); writes flush (session_scope commits) and append their audit event in the same
transaction, so a row and its audit record are committed together or not at all.

Writes (need a write session)
  create_intent(session, *, subsystem, error_class, values, seed_fix, evidence, source, reason, status,
                outcome, actor, now) -> dict                               audit: tuning.intent
  claim_open_intents(session, *, limit, now, subsystems) -> list[dict]    open → processing, oldest first
  archive_intent(session, intent_id, *, outcome, reason, actor, now) -> dict   audit: tuning.intent_archived
  add_candidate(session, *, run_id, params, uncapped_targets, origin, preflight_ok, preflight_reason,
                actor, now) -> dict                                        audit: tuning.candidate
  record_canary(session, candidate_id, *, gates, score, score_breakdown, log_excerpt, argv, actor, now)
                -> dict                                                    audit: tuning.canary
  create_promotion(session, *, run_id, candidate_id, subsystem, old_values, new_values, status, reason,
                   expires_at, target_file, actor, now) -> dict            audit: promotion.created
  set_promotion_status(session, promotion_id, status, *, actor, reason, decided, applied_at, backup_path,
                       detail, now) -> dict                                audit: promotion.<status>
  lock_promotion(session, promotion_id) -> dict | None                    row lock (PostgreSQL FOR UPDATE)
  due_promotions(session, now) -> list[int]                               pending_review past expires_at
  stale_work(session, *, older_than) -> {"runs": [...], "intents": [...]}   left behind by a killed process

Reads
  last_intent_at(session, subsystem, error_class) -> datetime | None
  get_intent(session, intent_id) -> dict | None
  list_intents(session, *, status=None, limit=100) -> list[dict]          newest first
  run_candidates(session, run_id) -> list[dict]                           in creation order
  list_runs(session, *, subsystem=None, limit=50) -> list[dict]           newest first
  list_promotions_detail(session, *, status=None, limit=100) -> list[dict]
      promotions newest first, each with ``inconclusive`` and ``verdict`` from its candidate's score
      breakdown, ``error_class`` from its run's intent and ``watch`` ({state, until, reason} or None)
  tuning_counts(session) -> {"open_intents", "processing_intents", "pending_promotions", "subsystems"}

Post-promotion watch and blocked failures (issue 12)
  create_watch(session, *, promotion_id, subsystem, until, baseline, progress, detail, actor, now) -> dict
                                                                           audit: promotion.watch_started
  active_watches(session) -> list[dict]                                   state "watching", oldest first
  later_applied(session, promotion_id, target_file) -> list[int]          applied later to the same file
  get_watch(session, promotion_id) -> dict | None
  update_watch(session, promotion_id, *, progress, now) -> dict           probe state (not audited)
  finish_watch(session, promotion_id, state, *, reason, detail, actor, now) -> dict | None
                                                                           audit: promotion.watch_<state>
  record_blocked(session, *, subsystem, error_class, cause, reason, until, now) -> (dict, new: bool)
      one row per blocked episode: a repeat before ``until`` raises count/last_seen   audit on a new row
  set_blocked_alert(session, blocked_id, alert_id)
  list_blocked(session, *, since, limit=20) -> list[dict]                 newest last_seen first

Audit payloads go through :func:`audit_safe`: storage.audit masks every key containing "token" or
"key", so numbers such as ``kv_cache_tokens`` are renamed (``kv_cache_toks``) instead of being hidden.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from storage.audit import append_event
from storage.models import (
    INTENT_OUTCOMES,
    PROMOTION_STATUSES,
    WATCH_STATES,
    Promotion,
    PromotionWatch,
    TuningBlocked,
    TuningCandidate,
    TuningIntent,
    TuningRun,
    utcnow,
)

KIND_INTENT = "tuning.intent"
KIND_INTENT_ARCHIVED = "tuning.intent_archived"
KIND_CANDIDATE = "tuning.candidate"
KIND_CANARY = "tuning.canary"
KIND_PROMOTION_CREATED = "promotion.created"


def _now(now: datetime | None) -> datetime:
    now = now or utcnow()
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def audit_safe(value: Any) -> Any:
    """Rename keys that storage.audit would mask although they hold no secret (``*tokens*`` → ``*toks*``)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k).replace("tokens", "toks").replace("token", "tok")
            out[name] = audit_safe(v)
        return out
    if isinstance(value, list | tuple):
        return [audit_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- intents

def create_intent(
    session: Session,
    *,
    subsystem: str,
    error_class: str,
    values: dict[str, Any] | None,
    seed_fix: dict[str, Any] | None,
    evidence: list[Any] | None,
    source: str | None,
    reason: str | None,
    status: str = "open",
    outcome: str | None = None,
    actor: str = "observer",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Persist one Observer finding; an escalated finding is stored already archived (status, outcome)."""
    now = _now(now)
    if outcome is not None and outcome not in INTENT_OUTCOMES:
        raise ValueError(f"intent outcome must be one of {', '.join(INTENT_OUTCOMES)}, got {outcome!r}")
    intent = TuningIntent(subsystem=subsystem, error_class=error_class, values=values, seed_fix=seed_fix, evidence=evidence,
                          source=source, status=status, outcome=outcome, reason=reason, created_at=now,
                          archived_at=now if status == "archived" else None)
    session.add(intent)
    session.flush()
    append_event(session, KIND_INTENT, subsystem, audit_safe({
        "intent_id": intent.id, "class": error_class, "values": values, "seed_fix": seed_fix, "evidence": evidence,
        "source": source, "reason": reason, "status": status, "outcome": outcome,
    }), actor, now=now)
    return intent.model_dump()


def last_intent_at(session: Session, subsystem: str, error_class: str) -> datetime | None:
    """When the newest intent of this (subsystem, class) was recorded (the persistent side of the cooldown)."""
    c = TuningIntent.__table__.c
    return session.execute(
        sa.select(sa.func.max(c.created_at)).where(c.subsystem == subsystem, c.error_class == error_class)
    ).scalar()


def claim_open_intents(session: Session, *, limit: int = 10, now: datetime | None = None,
                       subsystems: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Move up to ``limit`` open intents (oldest first, optionally of some subsystems) to "processing".

    On SQLite the write session's BEGIN IMMEDIATE serialises claimers; on PostgreSQL locked rows are
    skipped, so two workers never take the same intent. ``now`` is accepted for symmetry (unused).
    """
    query = select(TuningIntent).where(TuningIntent.status == "open")
    if subsystems is not None:
        query = query.where(TuningIntent.subsystem.in_(list(subsystems)))  # type: ignore[attr-defined]
    query = query.order_by(TuningIntent.created_at, TuningIntent.id).limit(limit)
    if session.connection().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.exec(query.execution_options(populate_existing=True)))
    for intent in rows:
        intent.status = "processing"
        session.add(intent)
    session.flush()
    return [i.model_dump() for i in rows]


def archive_intent(
    session: Session, intent_id: int, *, outcome: str, reason: str, actor: str = "tuning", now: datetime | None = None
) -> dict[str, Any]:
    """Close an intent with its outcome (CONFIG_TUNED, RATE_LIMITED, CONFIG_TUNING_FAILED, HEALING_DISABLED, ESCALATED)."""
    if outcome not in INTENT_OUTCOMES:
        raise ValueError(f"intent outcome must be one of {', '.join(INTENT_OUTCOMES)}, got {outcome!r}")
    intent = session.get(TuningIntent, intent_id)
    if intent is None:
        raise LookupError(f"tuning intent {intent_id} does not exist")
    now = _now(now)
    intent.status = "archived"
    intent.outcome = outcome
    intent.reason = reason
    intent.archived_at = now
    session.add(intent)
    session.flush()
    append_event(session, KIND_INTENT_ARCHIVED, intent.subsystem,
                 {"intent_id": intent.id, "class": intent.error_class, "outcome": outcome, "reason": reason}, actor, now=now)
    return intent.model_dump()


def stale_work(session: Session, *, older_than: datetime) -> dict[str, list[int]]:
    """Work a killed process left behind: runs still "running" that started before ``older_than``, and
    "processing" intents created before it that have no running run (interrupted between claim and run)."""
    rc, ic = TuningRun.__table__.c, TuningIntent.__table__.c
    runs = [row[0] for row in session.execute(
        sa.select(rc.id).where(rc.status == "running", rc.started_at < older_than).order_by(rc.id))]
    active = sa.select(rc.intent_id).where(rc.status == "running", rc.intent_id.is_not(None))
    intents = [row[0] for row in session.execute(
        sa.select(ic.id).where(ic.status == "processing", ic.created_at < older_than, ic.id.not_in(active)).order_by(ic.id))]
    return {"runs": runs, "intents": intents}


def run_intent_id(session: Session, run_id: int) -> int | None:
    run = session.get(TuningRun, run_id)
    return run.intent_id if run else None


def get_intent(session: Session, intent_id: int) -> dict[str, Any] | None:
    intent = session.get(TuningIntent, intent_id)
    return intent.model_dump() if intent else None


def list_intents(session: Session, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Intents newest first, optionally one status (open, processing, archived)."""
    query = select(TuningIntent)
    if status is not None:
        query = query.where(TuningIntent.status == status)
    return [i.model_dump() for i in session.exec(query.order_by(TuningIntent.created_at.desc(), TuningIntent.id.desc()).limit(limit))]


# --------------------------------------------------------------------------- candidates

def add_candidate(
    session: Session,
    *,
    run_id: int,
    params: dict[str, Any],
    uncapped_targets: dict[str, Any] | None,
    origin: str,
    preflight_ok: bool | None,
    preflight_reason: str | None,
    actor: str = "tuning",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record one candidate of a run with its pre-flight verdict."""
    now = _now(now)
    cand = TuningCandidate(run_id=run_id, params=params, uncapped_targets=uncapped_targets, preflight_ok=preflight_ok,
                           preflight_reason=preflight_reason, score_breakdown={"origin": origin}, created_at=now)
    session.add(cand)
    session.flush()
    run = session.get(TuningRun, run_id)
    append_event(session, KIND_CANDIDATE, run.subsystem if run else "tuning", {
        "run_id": run_id, "candidate_id": cand.id, "params": params, "uncapped_targets": uncapped_targets,
        "origin": origin, "preflight_ok": preflight_ok, "preflight_reason": preflight_reason,
    }, actor, now=now)
    return cand.model_dump()


def record_canary(
    session: Session,
    candidate_id: int,
    *,
    gates: dict[str, Any],
    score: float | None,
    score_breakdown: dict[str, Any],
    log_excerpt: str | None,
    argv: list[str] | None,
    actor: str = "tuning",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store a candidate's canary result: hard gates, score and its breakdown, the argv really used."""
    cand = session.get(TuningCandidate, candidate_id)
    if cand is None:
        raise LookupError(f"tuning candidate {candidate_id} does not exist")
    now = _now(now)
    breakdown = dict(cand.score_breakdown or {})
    breakdown.update(score_breakdown)
    cand.canary_gates = gates
    cand.score = score
    cand.score_breakdown = breakdown
    cand.log_excerpt = log_excerpt
    session.add(cand)
    session.flush()
    run = session.get(TuningRun, cand.run_id)
    append_event(session, KIND_CANARY, run.subsystem if run else "tuning", audit_safe({
        "run_id": cand.run_id, "candidate_id": cand.id, "params": cand.params, "argv": argv, "gates": gates,
        "score": score, "score_breakdown": breakdown,
    }), actor, now=now)
    return cand.model_dump()


def run_candidates(session: Session, run_id: int) -> list[dict[str, Any]]:
    query = select(TuningCandidate).where(TuningCandidate.run_id == run_id).order_by(TuningCandidate.id)
    return [c.model_dump() for c in session.exec(query)]


def list_runs(session: Session, *, subsystem: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    query = select(TuningRun)
    if subsystem is not None:
        query = query.where(TuningRun.subsystem == subsystem)
    return [r.model_dump() for r in session.exec(query.order_by(TuningRun.started_at.desc(), TuningRun.id.desc()).limit(limit))]


# --------------------------------------------------------------------------- promotions

def create_promotion(
    session: Session,
    *,
    run_id: int | None,
    candidate_id: int | None,
    subsystem: str,
    old_values: dict[str, Any],
    new_values: dict[str, Any],
    status: str,
    reason: str | None,
    expires_at: datetime | None,
    target_file: str | None,
    actor: str = "tuning",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record a run's winner as a promotion (pending_review, or approved for immediate application)."""
    if status not in PROMOTION_STATUSES:
        raise ValueError(f"promotion status must be one of {', '.join(PROMOTION_STATUSES)}, got {status!r}")
    now = _now(now)
    promo = Promotion(run_id=run_id, candidate_id=candidate_id, subsystem=subsystem, old_values=old_values,
                      new_values=new_values, status=status, reason=reason, created_at=now, expires_at=expires_at,
                      target_file=target_file)
    session.add(promo)
    session.flush()
    append_event(session, KIND_PROMOTION_CREATED, subsystem, {
        "promotion_id": promo.id, "run_id": run_id, "candidate_id": candidate_id, "old_values": old_values,
        "new_values": new_values, "status": status, "reason": reason, "expires_at": expires_at, "target_file": target_file,
    }, actor, now=now)
    return promo.model_dump()


def lock_promotion(session: Session, promotion_id: int) -> dict[str, Any] | None:
    """Read a promotion for a decision; on PostgreSQL the row stays locked until the transaction ends."""
    query = select(Promotion).where(Promotion.id == promotion_id)
    if session.connection().dialect.name == "postgresql":
        query = query.with_for_update()
    promo = session.exec(query.execution_options(populate_existing=True)).first()
    return promo.model_dump() if promo else None


def set_promotion_status(
    session: Session,
    promotion_id: int,
    status: str,
    *,
    actor: str,
    reason: str | None = None,
    decided: bool = False,
    applied_at: datetime | None = None,
    backup_path: str | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Move a promotion to ``status`` and audit it as ``promotion.<status>`` (with ``detail``)."""
    if status not in PROMOTION_STATUSES:
        raise ValueError(f"promotion status must be one of {', '.join(PROMOTION_STATUSES)}, got {status!r}")
    promo = session.get(Promotion, promotion_id)
    if promo is None:
        raise LookupError(f"promotion {promotion_id} does not exist")
    now = _now(now)
    previous = promo.status
    promo.status = status
    if reason is not None:
        promo.reason = reason
    if decided:
        promo.decided_by = actor
        promo.decided_at = now
    if applied_at is not None:
        promo.applied_at = applied_at
    if backup_path is not None:
        promo.backup_path = backup_path
    session.add(promo)
    session.flush()
    append_event(session, f"promotion.{status}", promo.subsystem, {
        "promotion_id": promo.id, "from": previous, "to": status, "reason": reason, "new_values": promo.new_values,
        "target_file": promo.target_file, "backup_path": promo.backup_path, **(detail or {}),
    }, actor, now=now)
    return promo.model_dump()


def due_promotions(session: Session, now: datetime | None = None) -> list[int]:
    """Ids of pending_review promotions whose expires_at has passed."""
    now = _now(now)
    c = Promotion.__table__.c
    return [row[0] for row in session.execute(
        sa.select(c.id).where(c.status == "pending_review", c.expires_at.is_not(None), c.expires_at <= now).order_by(c.id))]


def list_promotions_detail(session: Session, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Promotions newest first with the candidate's verdict (``inconclusive``) and the intent's class."""
    query = select(Promotion, TuningCandidate, TuningIntent).join(
        TuningCandidate, TuningCandidate.id == Promotion.candidate_id, isouter=True).join(
        TuningRun, TuningRun.id == Promotion.run_id, isouter=True).join(
        TuningIntent, TuningIntent.id == TuningRun.intent_id, isouter=True)
    if status is not None:
        query = query.where(Promotion.status == status)
    out = []
    for promo, cand, intent in session.exec(query.order_by(Promotion.created_at.desc(), Promotion.id.desc()).limit(limit)):
        row = promo.model_dump()
        breakdown = (cand.score_breakdown or {}) if cand else {}
        row["verdict"] = breakdown.get("verdict")
        row["inconclusive"] = breakdown.get("verdict") == "inconclusive"
        row["score"] = cand.score if cand else None
        row["error_class"] = intent.error_class if intent else None
        out.append(row)
    ids = [row["id"] for row in out]
    watches = {w.promotion_id: w for w in session.exec(
        select(PromotionWatch).where(PromotionWatch.promotion_id.in_(ids)))} if ids else {}  # type: ignore[attr-defined]
    for row in out:
        w = watches.get(row["id"])
        row["watch"] = {"state": w.state, "until": w.until, "reason": w.reason} if w else None
    return out


def tuning_counts(session: Session) -> dict[str, Any]:
    """Open/processing intents, pending promotions and the subsystems seen (for `tune status`)."""
    ic = TuningIntent.__table__.c
    counts = dict(session.execute(sa.select(ic.status, sa.func.count()).group_by(ic.status)).all())
    pending = session.execute(
        sa.select(sa.func.count()).select_from(Promotion).where(Promotion.status == "pending_review")).scalar() or 0
    rc = TuningRun.__table__.c
    subsystems = sorted({row[0] for row in session.execute(sa.select(ic.subsystem).distinct())}
                        | {row[0] for row in session.execute(sa.select(rc.subsystem).distinct())})
    return {"open_intents": int(counts.get("open", 0)), "processing_intents": int(counts.get("processing", 0)),
            "pending_promotions": int(pending), "subsystems": subsystems}


# --------------------------------------------------------------------------- post-promotion watch

KIND_WATCH_STARTED = "promotion.watch_started"
KIND_BLOCKED = "tuning.blocked"


def create_watch(
    session: Session,
    *,
    promotion_id: int,
    subsystem: str,
    until: datetime,
    baseline: dict[str, Any] | None,
    progress: dict[str, Any] | None,
    detail: dict[str, Any] | None = None,
    actor: str = "tuning",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Start watching an applied promotion until ``until`` (one watch per promotion)."""
    now = _now(now)
    watch = PromotionWatch(promotion_id=promotion_id, subsystem=subsystem, state="watching", started_at=now, until=until,
                           baseline=baseline, progress=progress)
    session.add(watch)
    session.flush()
    append_event(session, KIND_WATCH_STARTED, subsystem, audit_safe({
        "promotion_id": promotion_id, "until": until, "baseline": baseline, **(detail or {})}), actor, now=now)
    return watch.model_dump()


def later_applied(session: Session, promotion_id: int, target_file: str) -> list[int]:
    """Ids of promotions applied to the same file after this one (still applied): a rollback of this one
    would undo them too."""
    c = Promotion.__table__.c
    return [row[0] for row in session.execute(
        sa.select(c.id).where(c.target_file == target_file, c.status == "applied", c.id > promotion_id).order_by(c.id))]


def active_watches(session: Session) -> list[dict[str, Any]]:
    """Watches still running (state "watching"), oldest first."""
    query = select(PromotionWatch).where(PromotionWatch.state == "watching").order_by(PromotionWatch.started_at)
    return [w.model_dump() for w in session.exec(query)]


def get_watch(session: Session, promotion_id: int) -> dict[str, Any] | None:
    query = select(PromotionWatch).where(PromotionWatch.promotion_id == promotion_id)
    if session.connection().dialect.name == "postgresql":
        query = query.with_for_update()
    watch = session.exec(query.execution_options(populate_existing=True)).first()
    return watch.model_dump() if watch else None


def update_watch(session: Session, promotion_id: int, *, progress: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Store the probe/log state of a running watch (every poll; not audited: the decisions are)."""
    watch = session.get(PromotionWatch, promotion_id)
    if watch is None:
        raise LookupError(f"no watch for promotion {promotion_id}")
    watch.progress = progress
    watch.last_check_at = _now(now)
    session.add(watch)
    session.flush()
    return watch.model_dump()


def finish_watch(
    session: Session,
    promotion_id: int,
    state: str,
    *,
    reason: str,
    detail: dict[str, Any] | None = None,
    actor: str = "tuning",
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """End a running watch as verified / rolled_back / stopped (audited); None when none was running."""
    if state not in WATCH_STATES or state == "watching":
        raise ValueError(f"a watch ends as one of verified, rolled_back, stopped, got {state!r}")
    watch = session.get(PromotionWatch, promotion_id)
    if watch is None or watch.state != "watching":
        return None
    now = _now(now)
    watch.state = state
    watch.reason = reason
    watch.finished_at = now
    watch.last_check_at = now
    session.add(watch)
    session.flush()
    append_event(session, f"promotion.watch_{state}", watch.subsystem, audit_safe({
        "promotion_id": promotion_id, "reason": reason, "started_at": watch.started_at, "until": watch.until,
        **(detail or {})}), actor, now=now)
    return watch.model_dump()


# --------------------------------------------------------------------------- blocked failures

def record_blocked(
    session: Session,
    *,
    subsystem: str,
    error_class: str,
    cause: str,
    reason: str,
    until: datetime | None,
    actor: str = "tuning",
    now: datetime | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a failure the loop could not act on; a repeat of the same (subsystem, class, cause) while
    the episode lasts (before its ``until``) only raises ``count`` and ``last_seen``. Returns (row, new)."""
    now = _now(now)
    c = TuningBlocked.__table__.c
    open_row = session.exec(select(TuningBlocked).where(
        c.subsystem == subsystem, c.error_class == error_class, c.cause == cause,
        sa.or_(c.until.is_(None), c.until > now)).order_by(c.id.desc()).limit(1)).first()
    if open_row is not None:
        open_row.count += 1
        open_row.last_seen = now
        open_row.reason = reason
        if until is not None and (open_row.until is None or until > open_row.until):
            open_row.until = until
        session.add(open_row)
        session.flush()
        return open_row.model_dump(), False
    row = TuningBlocked(subsystem=subsystem, error_class=error_class, cause=cause, reason=reason, first_seen=now,
                        last_seen=now, until=until, count=1)
    session.add(row)
    session.flush()
    append_event(session, KIND_BLOCKED, subsystem, {
        "blocked_id": row.id, "class": error_class, "cause": cause, "reason": reason, "until": until}, actor, now=now)
    return row.model_dump(), True


def set_blocked_alert(session: Session, blocked_id: int, alert_id: int) -> None:
    row = session.get(TuningBlocked, blocked_id)
    if row is not None:
        row.alert_id = alert_id
        session.add(row)
        session.flush()


def list_blocked(session: Session, *, since: datetime, limit: int = 20) -> list[dict[str, Any]]:
    """Blocked-failure episodes seen since ``since``, the most recently seen first."""
    c = TuningBlocked.__table__.c
    query = select(TuningBlocked).where(c.last_seen >= since).order_by(c.last_seen.desc(), c.id.desc()).limit(limit)
    return [r.model_dump() for r in session.exec(query)]
