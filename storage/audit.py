"""The append-only, hash-chained audit trail.

Public API
  append_event(session, kind, subject, payload=None, actor="system", *, now=None) -> dict
      Appends one event and returns {"id", "seq", "created_at", "hash"}. Must run in a write
      session (storage.engine.session_scope(), the default): on SQLite the transaction already holds
      the write lock (BEGIN IMMEDIATE), on PostgreSQL the chain head row is locked FOR UPDATE, so
      two writers never read the same tail and never share a prev_hash. The event becomes visible
      (and the chain longer) only when the caller's transaction commits.
  verify_chain(session) -> ChainReport   walks the chain in order; names the first bad event and why
  canonical_json(value) -> str           sorted keys, compact separators, UTF-8 — what is hashed
  event_hash(seq, created_at, kind, subject, actor, payload_text, prev_hash) -> str
  GENESIS_HASH                           prev_hash of the first event ("0" * 64)
  KIND_* constants                       kinds written by storage itself; other areas use their own
                                         dotted lower-case kinds (e.g. "tuning.intent", "promotion.approved")

What is hashed: sha256 over the canonical JSON array
  [seq, created_at (ISO 8601 UTC, microseconds, 'Z'), kind, subject, actor, payload_text, prev_hash]
where payload_text is the canonical JSON of the payload after healing.config.mask_secrets (keys
containing key/token/secret/password/authorization become "***" before anything is stored or hashed).

What verify_chain detects, reported at the first event where the chain breaks:
  edited     an event's stored content no longer matches its hash
  deleted    a gap in the sequence, or the head records more events than the table holds (tail deleted)
  relinked   prev_hash differs from the previous event's hash (an event was rewritten with a fresh
             hash, or events were removed and renumbered)
  reordered  events whose ids run backwards relative to their chain order
  inserted   events exist beyond the recorded head (written around append_event)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from healing.config import mask_secrets
from storage.engine import is_write_session
from storage.models import AuditEvent, AuditHead, utcnow

GENESIS_HASH = "0" * 64

KIND_CHECK = "check"
KIND_HEAL = "heal"
KIND_ALERT = "alert"
KIND_IMAGE_REGISTERED = "image.registered"
KIND_IMAGE_UPDATED = "image.updated"
KIND_REQUEST_ENQUEUED = "request.enqueued"
KIND_REQUEST_FINISHED = "request.finished"
KIND_RUN_CLAIMED = "tuning.run_claimed"
KIND_RUN_REFUSED = "tuning.run_refused"

_HEAD_ID = 1


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "item"):  # NumPy scalars: their Python value
        return value.item()
    if hasattr(value, "tolist"):  # NumPy arrays
        return value.tolist()
    raise TypeError(f"audit payload value of type {type(value).__name__} is not JSON serialisable")


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, non-ASCII kept as UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _iso(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(seq: int, created_at: datetime, kind: str, subject: str, actor: str, payload_text: str, prev_hash: str) -> str:
    """The sha256 (hex) that chains one event to the previous one."""
    material = json.dumps([seq, _iso(created_at), kind, subject, actor, payload_text, prev_hash],
                          separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _head_query() -> Any:
    # populate_existing: a long-lived session may hold a stale head from an earlier transaction;
    # the row just read under the lock must win over the identity map.
    return select(AuditHead).where(AuditHead.id == _HEAD_ID).with_for_update().execution_options(populate_existing=True)


def _locked_head(session: Session) -> AuditHead:
    head = session.exec(_head_query()).first()
    if head is not None:
        return head
    # Migration 0001 seeds the head; recreate it only if someone deleted it on an empty chain.
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(
        insert(AuditHead).values(id=_HEAD_ID, seq=0, last_event_id=None, last_hash=GENESIS_HASH).on_conflict_do_nothing()
    )
    return session.exec(_head_query()).one()


def append_event(
    session: Session,
    kind: str,
    subject: str,
    payload: dict[str, Any] | None = None,
    actor: str = "system",
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Append one audit event under the chain lock; returns its id, seq, created_at and hash."""
    if not kind or len(kind) > 64:
        raise ValueError(f"audit kind must be 1..64 characters, got {kind!r}")
    if not is_write_session(session):
        raise RuntimeError("append_event needs a write session (storage.engine.session_scope(write=True))")
    head = _locked_head(session)
    created_at = now or utcnow()
    created_at = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at.astimezone(UTC)
    payload_text = canonical_json(mask_secrets(payload or {}))
    seq = head.seq + 1
    digest = event_hash(seq, created_at, kind, subject, actor, payload_text, head.last_hash)
    event = AuditEvent(seq=seq, created_at=created_at, kind=kind, subject=subject, actor=actor,
                       payload=payload_text, prev_hash=head.last_hash, hash=digest)
    session.add(event)
    session.flush()
    head.seq = seq
    head.last_event_id = event.id
    head.last_hash = digest
    session.add(head)
    session.flush()
    return {"id": event.id, "seq": seq, "created_at": created_at, "hash": digest}


@dataclass(frozen=True)
class ChainReport:
    """Outcome of verify_chain. ``problem`` is None when intact; ``reason`` is one operator line."""

    ok: bool
    events: int
    first_bad_id: int | None = None
    problem: str | None = None
    reason: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.events} events"
        return f"audit chain broken at event {self.first_bad_id}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_chain(session: Session, *, batch_size: int = 5000) -> ChainReport:
    """Recompute every hash in chain order and check the links; stops at the first problem."""
    table = AuditEvent.__table__
    query = sa.select(
        table.c.id, table.c.seq, table.c.created_at, table.c.kind, table.c.subject,
        table.c.actor, table.c.payload, table.c.prev_hash, table.c.hash,
    ).order_by(table.c.seq)
    head = session.exec(select(AuditHead).where(AuditHead.id == _HEAD_ID).execution_options(populate_existing=True)).first()
    head_seq = head.seq if head is not None else 0

    prev_hash = GENESIS_HASH
    prev_id: int | None = None
    count = 0
    result = session.execute(query, execution_options={"yield_per": batch_size})
    for row in result:
        expected_seq = count + 1
        if event_hash(row.seq, row.created_at, row.kind, row.subject, row.actor, row.payload, row.prev_hash) != row.hash:
            return ChainReport(False, count, row.id, "edited",
                               f"event {row.id} (seq {row.seq}) was edited: its content no longer matches its hash")
        if row.seq != expected_seq:
            missing = row.seq - expected_seq
            return ChainReport(False, count, row.id, "deleted",
                               f"{missing} event(s) missing before event {row.id}: sequence jumps from {expected_seq - 1} to {row.seq}")
        if row.prev_hash != prev_hash:
            before = f"event {prev_id}" if prev_id is not None else "the start of the chain"
            return ChainReport(False, count, row.id, "relinked",
                               f"event {row.id}'s prev_hash does not match the hash of {before}: "
                               "an event was rewritten, or events were deleted and renumbered")
        if prev_id is not None and row.id <= prev_id:
            return ChainReport(False, count, row.id, "reordered",
                               f"event {row.id} (seq {row.seq}) comes after event {prev_id} in the chain but has a smaller id: events were reordered")
        if row.seq == head_seq + 1:
            return ChainReport(False, count, row.id, "inserted",
                               f"event {row.id} (seq {row.seq}) lies beyond the recorded chain head (seq {head_seq}): written around append_event")
        prev_hash, prev_id, count = row.hash, row.id, count + 1

    if head_seq > count:
        missing_id = head.last_event_id if head is not None else None
        return ChainReport(False, count, missing_id, "deleted",
                           f"the last {head_seq - count} event(s) were deleted: the head records {head_seq} events "
                           f"ending at event {missing_id}, the table holds {count}")
    if head is not None and count and head.last_hash != prev_hash:
        return ChainReport(False, count, prev_id, "edited",
                           f"event {prev_id}, the last one, does not match the hash recorded in the chain head")
    return ChainReport(True, count)
