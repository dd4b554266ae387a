"""All selfheal tables in one readable place (SQLModel on SQLAlchemy 2.x).

Tables
  images              registered PixelRTS images: policy, golden copy reference, baseline, status
  checks              one row per health check of a file (registered image or ad-hoc); unchanged checks
                      of an image are summarised in check_summaries, sampled into checks periodically
  check_summaries     per image: how many unchanged checks were counted instead of stored, and when
  heals               one row per healing action (restore, quarantine, escalate, accept_change …)
  alerts              operator alerts with acknowledgement and webhook delivery state
  audit_events        the append-only, hash-chained audit trail (see storage.audit)
  audit_head          one row: the chain's tail (sequence, hash) — detects deletion of the last events
  worker_heartbeats   one row per worker process
  run_requests        "run now" requests written by the dashboard/CLI and executed by the worker
  tuning_intents      Observer findings waiting for / handled by the tuning runner
  tuning_runs         one tuning attempt for a subsystem (rate limited, see storage.ratelimit)
  tuning_candidates   candidate parameter sets of a run, with pre-flight, canary gates and score
  promotions          a winning candidate's change, reviewed/applied/rejected/expired
  tuning_rate_limits  one row per subsystem, the lock anchor of claim_run_slot
  promotion_watches   the post-promotion watch of an applied promotion (window, baseline, probe state)
  tuning_blocked      failures seen while the loop could not act (cooldown, rate limit), deduplicated
  login_attempts      dashboard login failures counted per operator name and per client (throttling)
  api_tokens          REST API bearer tokens: name, role, sha256 of the token (never the token itself)
  leader_jobs         one row per global job: the last period the fleet's leader claimed (storage.leader)

Every timestamp is a timezone-aware UTC datetime (`UTCDateTime`); naive datetimes handed in are taken
as UTC. JSON columns hold plain dicts/lists. The vocabularies below are enforced by CHECK
constraints, so a typo in a writer fails loudly instead of hiding a row from the dashboard.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Stable constraint names make future Alembic migrations (and SQLite batch mode) predictable.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = SQLModel.metadata

CHECK_STATUSES = ("healthy", "warning", "critical", "unknown")
ALERT_SEVERITIES = ("info", "warning", "critical")
WEBHOOK_STATES = ("none", "pending", "delivered", "failed")
REQUEST_KINDS = ("check", "heal", "accept_change", "tune")
REQUEST_STATUSES = ("pending", "running", "done", "failed")
WORKER_STATES = ("starting", "running", "stopping", "stopped")
INTENT_STATUSES = ("open", "processing", "archived")
INTENT_OUTCOMES = ("CONFIG_TUNED", "RATE_LIMITED", "CONFIG_TUNING_FAILED", "HEALING_DISABLED", "ESCALATED")
RUN_STATUSES = ("running", "succeeded", "failed")
LOGIN_SCOPES = ("operator", "client")
PROMOTION_STATUSES = ("pending_review", "approved", "applied", "rejected", "expired", "failed", "rolled_back")
WATCH_STATES = ("watching", "verified", "rolled_back", "stopped")
BLOCKED_CAUSES = ("cooldown", "rate_limited")
API_ROLES = ("viewer", "operator")


def utcnow() -> datetime:
    """Now, timezone-aware UTC (the only clock the storage layer uses when none is passed in)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back timezone-aware in UTC, on SQLite as on PostgreSQL.

    SQLite has no time zone type; storing naive UTC keeps the text sortable, so the time indexes work.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    quoted = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({quoted})", name=name)


def _ts(nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=index)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.JSON, nullable=nullable)


def _text(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.Text, nullable=nullable)


def _registering_node() -> str:
    from storage.nodes import current_node  # storage.nodes imports this module

    return current_node()


# Tables updated in place every check cycle keep half of each page free on PostgreSQL (migration 0008).
_ROOM_TO_UPDATE: dict[str, Any] = {"postgresql_with": {"fillfactor": 50}}


class Image(SQLModel, table=True):
    """A registered PixelRTS image and its healing policy."""

    __tablename__ = "images"
    # fillfactor 50 on PostgreSQL (migration 0008): a cycle's last_checked_at update stays on its page (HOT).
    __table_args__ = (_in("last_status", CHECK_STATUSES, "last_status"), _ROOM_TO_UPDATE)

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(sa_type=sa.String(4096), unique=True)
    name: str | None = Field(default=None, sa_type=sa.String(255))
    critical: bool = False
    interval_s: int = 300
    golden_sha256: str | None = Field(default=None, sa_type=sa.String(64))
    golden_path: str | None = Field(default=None, sa_type=sa.String(4096))
    baseline_path: str | None = Field(default=None, sa_type=sa.String(4096))
    baseline: dict[str, Any] | None = _json()
    auto_heal_enabled: bool = False
    marked_bad: bool = False
    consecutive_heal_failures: int = 0
    last_status: str = Field(default="unknown", sa_type=sa.String(16))
    last_check_id: int | None = None  # denormalised pointer (no FK: checks already reference images)
    last_checked_at: datetime | None = _ts(nullable=True)
    registered_at: datetime = _ts()
    updated_at: datetime = _ts()
    # The worker node that checks and heals this image (storage.nodes): at registration the registering
    # process's node; None only for images registered before nodes existed (the leader adopts them).
    node: str | None = Field(default_factory=lambda: _registering_node(), sa_type=sa.String(255), index=True)


class Check(SQLModel, table=True):
    """One health check of one file; image_id is null for ad-hoc checks of unregistered files."""

    __tablename__ = "checks"
    __table_args__ = (
        _in("status", CHECK_STATUSES, "status"),
        sa.Index("ix_checks_image_id_created_at", "image_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    image_id: int | None = Field(default=None, foreign_key="images.id", ondelete="CASCADE")
    image_path: str = Field(sa_type=sa.String(4096))
    status: str = Field(sa_type=sa.String(16))
    confidence: float = 0.0
    metrics: dict[str, Any] | None = _json()
    findings: list[dict[str, Any]] | None = _json()
    recommendation: str | None = _text()
    duration_ms: float = 0.0
    file_size: int | None = Field(default=None, sa_type=sa.BigInteger)
    file_sha256: str | None = Field(default=None, sa_type=sa.String(64))
    file_mtime_ns: int | None = Field(default=None, sa_type=sa.BigInteger)
    reused_analysis: bool = False
    created_at: datetime = _ts(index=True)


class CheckSummary(SQLModel, table=True):
    """Unchanged checks of one image counted instead of stored (storage.retention.record_unchanged): a
    healthy image whose file did not change costs this row's update, and a sampled check row in
    ``checks`` every ``storage.retention.samples_every_s`` for the trend charts."""

    __tablename__ = "check_summaries"
    __table_args__ = (_ROOM_TO_UPDATE,)

    image_id: int = Field(foreign_key="images.id", ondelete="CASCADE", primary_key=True)
    unchanged_checks: int = Field(default=0, sa_type=sa.BigInteger)  # counted since the image was registered
    sampled_checks: int = Field(default=0, sa_type=sa.BigInteger)  # of which written as sampled check rows
    first_unchanged_at: datetime | None = _ts(nullable=True)
    last_unchanged_at: datetime | None = _ts(nullable=True)
    last_sample_at: datetime | None = _ts(nullable=True)
    last_sample_check_id: int | None = None


class Heal(SQLModel, table=True):
    """One healing action and its outcome."""

    __tablename__ = "heals"
    __table_args__ = (sa.Index("ix_heals_image_id_created_at", "image_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    image_id: int | None = Field(default=None, foreign_key="images.id", ondelete="CASCADE")
    check_id: int | None = Field(default=None, foreign_key="checks.id", ondelete="SET NULL")
    image_path: str = Field(sa_type=sa.String(4096))
    action: str = Field(sa_type=sa.String(255))  # built-in names or a custom action's module:function
    outcome: str = Field(sa_type=sa.String(32))
    source_path: str | None = Field(default=None, sa_type=sa.String(4096))
    quarantine_path: str | None = Field(default=None, sa_type=sa.String(4096))
    detail: dict[str, Any] | None = _json()
    duration_ms: float = 0.0
    created_at: datetime = _ts(index=True)


class Alert(SQLModel, table=True):
    """An operator alert; webhook_state tracks delivery to the configured notification webhook."""

    __tablename__ = "alerts"
    __table_args__ = (
        _in("severity", ALERT_SEVERITIES, "severity"),
        _in("webhook_state", WEBHOOK_STATES, "webhook_state"),
        sa.Index("ix_alerts_acknowledged_created_at", "acknowledged", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=sa.String(64))
    severity: str = Field(sa_type=sa.String(16))
    subject: str = Field(sa_type=sa.String(4096))
    reason: str | None = _text()
    message: str = Field(sa_type=sa.Text)
    created_at: datetime = _ts(index=True)
    acknowledged: bool = False
    acknowledged_by: str | None = Field(default=None, sa_type=sa.String(255))
    acknowledged_at: datetime | None = _ts(nullable=True)
    webhook_state: str = Field(default="none", sa_type=sa.String(16))
    webhook_attempts: int = 0
    webhook_last_error: str | None = _text()
    webhook_delivered_at: datetime | None = _ts(nullable=True)


class AuditEvent(SQLModel, table=True):
    """One link of the audit chain. Never updated or deleted; see storage.audit for the hash."""

    __tablename__ = "audit_events"
    __table_args__ = (
        sa.Index("ix_audit_events_kind_created_at", "kind", "created_at"),
        sa.Index("ix_audit_events_subject_created_at", "subject", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(unique=True)  # position in the chain, 1-based, assigned under the chain lock
    created_at: datetime = _ts(index=True)
    kind: str = Field(sa_type=sa.String(64))
    subject: str = Field(sa_type=sa.String(4096))
    actor: str = Field(sa_type=sa.String(255))
    payload: str = Field(sa_type=sa.Text)  # canonical JSON text, exactly what was hashed
    prev_hash: str = Field(sa_type=sa.String(64))
    hash: str = Field(sa_type=sa.String(64))


class AuditHead(SQLModel, table=True):
    """The chain's tail (single row, id=1): also the row that PostgreSQL appenders lock."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    last_event_id: int | None = None
    last_hash: str = Field(sa_type=sa.String(64))


class WorkerHeartbeat(SQLModel, table=True):
    """Liveness of one worker process, beaten periodically by the scheduler."""

    __tablename__ = "worker_heartbeats"
    __table_args__ = (_in("state", WORKER_STATES, "state"),)

    worker_id: str = Field(sa_type=sa.String(255), primary_key=True)
    pid: int
    host: str = Field(sa_type=sa.String(255))
    started_at: datetime = _ts()
    last_beat: datetime = _ts()
    state: str = Field(default="running", sa_type=sa.String(16))
    info: dict[str, Any] | None = _json()
    node: str | None = Field(default=None, sa_type=sa.String(255))  # the --node it runs as (storage.nodes)


class RunRequest(SQLModel, table=True):
    """A "run now" request: written by the dashboard/CLI, claimed and executed by the worker."""

    __tablename__ = "run_requests"
    __table_args__ = (
        _in("kind", REQUEST_KINDS, "kind"),
        _in("status", REQUEST_STATUSES, "status"),
        sa.Index("ix_run_requests_status_created_at", "status", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=sa.String(32))
    target: str = Field(sa_type=sa.String(4096))
    requested_by: str = Field(sa_type=sa.String(255))
    status: str = Field(default="pending", sa_type=sa.String(16))
    claimed_by: str | None = Field(default=None, sa_type=sa.String(255))
    result: dict[str, Any] | None = _json()
    created_at: datetime = _ts()
    started_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)


class TuningIntent(SQLModel, table=True):
    """An Observer finding (one failure of a service) and what became of it."""

    __tablename__ = "tuning_intents"
    __table_args__ = (
        _in("status", INTENT_STATUSES, "status"),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN (" + ", ".join(f"'{o}'" for o in INTENT_OUTCOMES) + ")", name="outcome"
        ),
        sa.Index("ix_tuning_intents_subsystem_status", "subsystem", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subsystem: str = Field(sa_type=sa.String(64))
    error_class: str = Field(sa_type=sa.String(64))
    values: dict[str, Any] | None = _json()
    seed_fix: dict[str, Any] | None = _json()
    evidence: list[Any] | None = _json()  # the decisive log lines, e.g. [{"line": 42, "text": "..."}]
    source: str | None = Field(default=None, sa_type=sa.String(4096))
    status: str = Field(default="open", sa_type=sa.String(16))
    outcome: str | None = Field(default=None, sa_type=sa.String(32))
    reason: str | None = _text()
    created_at: datetime = _ts(index=True)
    archived_at: datetime | None = _ts(nullable=True)


class TuningRun(SQLModel, table=True):
    """One rate-limited tuning attempt; created only by storage.ratelimit.claim_run_slot."""

    __tablename__ = "tuning_runs"
    __table_args__ = (
        _in("status", RUN_STATUSES, "status"),
        sa.Index("ix_tuning_runs_subsystem_started_at", "subsystem", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    intent_id: int | None = Field(default=None, foreign_key="tuning_intents.id", ondelete="SET NULL")
    subsystem: str = Field(sa_type=sa.String(64))
    mode: str = Field(sa_type=sa.String(16))
    status: str = Field(default="running", sa_type=sa.String(16))
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)
    baseline_score: float | None = None
    decision: str | None = Field(default=None, sa_type=sa.String(64))
    reason: str | None = _text()


class TuningCandidate(SQLModel, table=True):
    """One candidate parameter set of a run."""

    __tablename__ = "tuning_candidates"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="tuning_runs.id", ondelete="CASCADE", index=True)
    params: dict[str, Any] | None = _json(nullable=False)
    uncapped_targets: dict[str, Any] | None = _json()
    preflight_ok: bool | None = None
    preflight_reason: str | None = _text()
    canary_gates: dict[str, Any] | None = _json()
    score: float | None = None
    score_breakdown: dict[str, Any] | None = _json()
    log_excerpt: str | None = _text()
    created_at: datetime = _ts()


class Promotion(SQLModel, table=True):
    """A configuration change proposed by a run: reviewed (prod), applied, rejected or expired."""

    __tablename__ = "promotions"
    __table_args__ = (
        _in("status", PROMOTION_STATUSES, "status"),
        sa.Index("ix_promotions_status_created_at", "status", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, foreign_key="tuning_runs.id", ondelete="SET NULL")
    candidate_id: int | None = Field(default=None, foreign_key="tuning_candidates.id", ondelete="SET NULL")
    subsystem: str = Field(sa_type=sa.String(64))
    old_values: dict[str, Any] | None = _json(nullable=False)
    new_values: dict[str, Any] | None = _json(nullable=False)
    status: str = Field(default="pending_review", sa_type=sa.String(16))
    reason: str | None = _text()
    created_at: datetime = _ts()
    expires_at: datetime | None = _ts(nullable=True)
    decided_by: str | None = Field(default=None, sa_type=sa.String(255))
    decided_at: datetime | None = _ts(nullable=True)
    applied_at: datetime | None = _ts(nullable=True)
    target_file: str | None = Field(default=None, sa_type=sa.String(4096))
    backup_path: str | None = Field(default=None, sa_type=sa.String(4096))


class PromotionWatch(SQLModel, table=True):
    """The watch of an applied promotion (healing.tuning.watch): until when, what was seen before the
    apply, and the probe/log state a restarted worker resumes from."""

    __tablename__ = "promotion_watches"
    __table_args__ = (
        _in("state", WATCH_STATES, "state"),
        sa.Index("ix_promotion_watches_state_until", "state", "until"),
    )

    promotion_id: int = Field(foreign_key="promotions.id", ondelete="CASCADE", primary_key=True)
    subsystem: str = Field(sa_type=sa.String(64))
    state: str = Field(default="watching", sa_type=sa.String(16))
    started_at: datetime = _ts()
    until: datetime = _ts()
    baseline: dict[str, Any] | None = _json()  # /metrics numbers read just before the apply
    progress: dict[str, Any] | None = _json()  # probe counts, first healthy time, log offsets, last metrics
    last_check_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)
    reason: str | None = _text()


class TuningBlocked(SQLModel, table=True):
    """A failure the loop saw but could not act on (Observer cooldown, rate limit): one row per episode,
    repeats within ``until`` raise ``count`` and ``last_seen`` instead of adding rows; alerted once."""

    __tablename__ = "tuning_blocked"
    __table_args__ = (
        _in("cause", BLOCKED_CAUSES, "cause"),
        sa.Index("ix_tuning_blocked_subsystem_error_class", "subsystem", "error_class"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subsystem: str = Field(sa_type=sa.String(64))
    error_class: str = Field(sa_type=sa.String(64))
    cause: str = Field(sa_type=sa.String(16))
    reason: str | None = _text()
    first_seen: datetime = _ts()
    last_seen: datetime = _ts(index=True)
    until: datetime | None = _ts(nullable=True)
    count: int = 1
    alert_id: int | None = None


class TuningRateLimit(SQLModel, table=True):
    """Per-subsystem anchor row that claim_run_slot locks; the counts themselves derive from tuning_runs."""

    __tablename__ = "tuning_rate_limits"

    subsystem: str = Field(sa_type=sa.String(64), primary_key=True)
    last_claim_at: datetime | None = _ts(nullable=True)
    claims_granted: int = 0
    claims_refused: int = 0


class LoginAttempt(SQLModel, table=True):
    """Failed dashboard logins counted against one operator name or one client address.

    One row per (scope, key); dashboard.throttle locks both rows of an attempt, counts the failure
    before the password is compared, and refuses every attempt while ``locked_until`` is in the future.
    """

    __tablename__ = "login_attempts"
    __table_args__ = (_in("scope", LOGIN_SCOPES, "scope"),)

    scope: str = Field(sa_type=sa.String(16), primary_key=True)
    key: str = Field(sa_type=sa.String(255), primary_key=True)
    failures: int = 0  # failures in the current streak (each within the window of the previous one)
    last_failure_at: datetime | None = _ts(nullable=True)
    locked_until: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts()


class ApiToken(SQLModel, table=True):
    """A bearer token of the REST API (healing.api.tokens). Only the sha256 of the token is stored: the
    token is shown once at creation. A revoked token keeps its row (and name) for the audit trail."""

    __tablename__ = "api_tokens"
    __table_args__ = (_in("role", API_ROLES, "role"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=sa.String(64), unique=True)
    role: str = Field(sa_type=sa.String(16))
    token_sha256: str = Field(sa_type=sa.String(64), unique=True)
    created_at: datetime = _ts()
    created_by: str = Field(sa_type=sa.String(255))
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)
    revoked_by: str | None = Field(default=None, sa_type=sa.String(255))


class LeaderJob(SQLModel, table=True):
    """The last period claimed by each global job (storage.leader.claim_slot): one row per job."""

    __tablename__ = "leader_jobs"

    job: str = Field(sa_type=sa.String(64), primary_key=True)
    slot: int = Field(sa_type=sa.BigInteger)  # floor(unix time / the job's interval)
    node: str = Field(sa_type=sa.String(255))
    ran_at: datetime = _ts()
    runs: int = Field(default=0, sa_type=sa.BigInteger)
