"""Read-side data for the dashboard pages: plain dicts and DataFrames, never ORM objects.

Every function opens its own read session (``session_scope(url, write=False)``: a deferred SQLite
transaction that never blocks the worker) and returns data that outlives it. ``url`` defaults to the
configured database. Queries that storage.queries already offers are delegated there; the few the
pages need beyond them (tuning intents/runs/candidates, requests of one target, audit CSV export)
live here as plain SQLAlchemy Core selects.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from dashboard.exports import spreadsheet_safe
from healing.config import Settings
from storage import queries
from storage.engine import session_scope
from storage.models import (
    CHECK_STATUSES,
    AuditEvent,
    AuditHead,
    Check,
    Image,
    Promotion,
    RunRequest,
    TuningCandidate,
    TuningIntent,
    TuningRun,
    utcnow,
)
from storage.ratelimit import RateLimits, rate_limit_state

DEFAULT_SUBSYSTEM = "vllm"


def _rows(result: sa.Result[Any]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in result]


# --------------------------------------------------------------------------- overview

def fleet(url: str | None = None) -> dict[str, int]:
    """Counts of registered images per status (healthy/warning/critical/unknown), total, marked bad."""
    with session_scope(url, write=False) as session:
        return queries.fleet_summary(session)


def recent_alerts(url: str | None = None, *, limit: int = 10) -> list[dict[str, Any]]:
    """The newest alerts, newest first."""
    with session_scope(url, write=False) as session:
        return queries.recent_alerts(session, limit=limit)


def stale_after(beat: dict[str, Any], fallback_s: float) -> float:
    """Seconds without a beat after which a worker counts as down: twice the interval it beats at (its
    heartbeat info says which), else ``fallback_s`` (dashboard.worker_stale_s)."""
    interval = (beat.get("info") or {}).get("heartbeat_interval")
    try:
        return 2.0 * float(interval) if interval else fallback_s
    except (TypeError, ValueError):
        return fallback_s


def worker_status(url: str | None = None, *, stale_after_s: float = 120.0, now: datetime | None = None) -> dict[str, Any]:
    """The latest worker heartbeat judged for the operator.

    ``state`` is "running" (recent beat, running), "stale" (no beat for twice the worker's heartbeat
    interval, or ``stale_after_s`` when it did not say), "stopped" (the worker said so) or "absent"
    (no worker ever beat into this database). ``down`` lists every worker whose beat is stale while it
    claims to run (several workers, one per node, can share a database).
    """
    with session_scope(url, write=False) as session:
        beat = queries.worker_heartbeat(session, now=now)
        beats = [b.model_dump() for b in session.exec(_heartbeats_query())]
        pending = len(queries.pending_requests(session, limit=1000))
    now = now or utcnow()
    down = []
    for other in beats:
        age = max(0.0, (now - other["last_beat"]).total_seconds())
        limit = stale_after(other, stale_after_s)
        if other["state"] not in ("stopping", "stopped") and age > limit:
            down.append({**other, "age_s": age, "stale_after_s": limit})
    if beat is None:
        return {"state": "absent", "beat": None, "pending_requests": pending, "down": down}
    beat["stale_after_s"] = stale_after(beat, stale_after_s)
    if beat["state"] in ("stopping", "stopped"):
        state = "stopped"
    elif beat["age_s"] > beat["stale_after_s"]:
        state = "stale"
    else:
        state = "running"
    return {"state": state, "beat": beat, "pending_requests": pending, "down": down}


def _heartbeats_query() -> Any:
    from sqlmodel import select

    from storage.models import WorkerHeartbeat

    return select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_beat.desc()).limit(100)


def alerts(url: str | None = None, *, limit: int = 20, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Alerts newest first with their lifecycle state (storage.queries.alerts_with_state), each with
    ``short`` (the file name of an image path) and ``image_id`` when the subject is a registered image."""
    with session_scope(url, write=False) as session:
        found = queries.alerts_with_state(session, limit=limit, states=states)
        paths = {a["subject"] for a in found}
        i = Image.__table__.c
        ids = {row.path: row.id for row in session.execute(sa.select(i.path, i.id).where(i.path.in_(paths)))} if paths else {}
    for alert in found:
        alert["image_id"] = ids.get(alert["subject"])
        alert["short"] = short_name(alert["subject"]) if alert["image_id"] is not None else alert["subject"]
    return found


def request_progress(request: dict[str, Any], now: datetime | None = None) -> str:
    """One line on where a run-now request is: waiting, running (for how long, on which worker), or
    its outcome (status of the check, heal result, accepted change, or the error)."""
    from dashboard.views.common import fmt_duration

    now = now or utcnow()
    head = f"#{request['id']} {request['kind'].replace('_', ' ')} by {request['requested_by']}"
    if request["status"] == "pending":
        return f"⏳ {head}: waiting for the worker ({fmt_duration((now - request['created_at']).total_seconds())})"
    if request["status"] == "running":
        since = request.get("started_at") or request["created_at"]
        worker = f" on {request['claimed_by']}" if request.get("claimed_by") else ""
        return f"⚙️ {head}: running{worker} ({fmt_duration((now - since).total_seconds())})"
    result = request.get("result") or {}
    took = ""
    if request.get("finished_at") is not None:
        seconds = (request["finished_at"] - (request.get("started_at") or request["created_at"])).total_seconds()
        took = f" in {seconds:.1f} s"
    if request["status"] == "failed":
        return f"❌ {head}: failed{took}: {result.get('error') or 'see the worker log'}"
    if request["kind"] == "check":
        outcome = f"{result.get('status', '?')}" + (" (analysis reused)" if result.get("reused_analysis") else "")
    elif request["kind"] == "heal":
        outcome = ("healed" if result.get("healthy") else "not healed") + (
            f" ({result['action']})" if result.get("action") else "") + (
            f": {result['message']}" if result.get("message") and not result.get("healthy") else "")
    elif request["kind"] == "accept_change":
        outcome = "new golden copy accepted" + (f", now {result['status']}" if result.get("status") else "")
    else:
        outcome = "done"
    return f"✅ {head}: done{took}: {outcome}"


def short_name(path: str) -> str:
    """The last component of a path ('kernel.rts.png' for /x/y/kernel.rts.png)."""
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def needs_attention(url: str | None = None, *, now: datetime | None = None) -> dict[str, Any]:
    """What an operator must look at now: open critical/warning alerts, promotions waiting for review
    (soonest expiry first) and images marked bad."""
    now = now or utcnow()
    open_alerts = [a for a in alerts(url, limit=200, states=("open",)) if a["severity"] in ("critical", "warning")]
    open_alerts.sort(key=lambda a: (a["severity"] != "critical", -a["created_at"].timestamp()))
    with session_scope(url, write=False) as session:
        pending = queries.list_promotions(session, status="pending_review", limit=200)
        i = Image.__table__.c
        bad = _rows(session.execute(sa.select(i.id, i.name, i.path, i.consecutive_heal_failures, i.last_status)
                                    .where(i.marked_bad.is_(True)).order_by(i.path).limit(200)))
    pending = [p for p in pending if p["expires_at"] is None or p["expires_at"] > now]
    pending.sort(key=lambda p: (p["expires_at"] is None, p["expires_at"] or now))
    for image in bad:
        image["short"] = short_name(image["path"])
    return {"alerts": open_alerts, "promotions": pending, "marked_bad": bad}


def rate_limits_from_settings(settings: Settings) -> RateLimits:
    """RateLimits from ``tuning.rate_limits`` (keys as RateLimits' fields); the DESIGN defaults otherwise."""
    section = settings.section("tuning").get("rate_limits") or {}
    known = {f.name for f in fields(RateLimits)}
    given = {k: v for k, v in section.items() if k in known} if isinstance(section, dict) else {}
    return RateLimits(**given)


def known_subsystems(url: str | None = None) -> list[str]:
    """Subsystems that have intents or runs, plus vllm (the first one we tune), sorted."""
    with session_scope(url, write=False) as session:
        names = {DEFAULT_SUBSYSTEM}
        for table in (TuningRun.__table__, TuningIntent.__table__):
            names.update(row[0] for row in session.execute(sa.select(table.c.subsystem).distinct()))
    return sorted(names)


def rate_limit_states(url: str | None = None, *, limits: RateLimits | None = None,
                      now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per known subsystem: runs used in the window, cooldown and backoff left, next allowed run."""
    limits = limits or RateLimits()
    subsystems = known_subsystems(url)
    with session_scope(url, write=False) as session:
        return [rate_limit_state(session, name, limits, now).as_dict() for name in subsystems]


# --------------------------------------------------------------------------- images

def images_frame(url: str | None = None) -> pd.DataFrame:
    """Registered images with their latest status, one row per image, ordered by path."""
    with session_scope(url, write=False) as session:
        rows = queries.list_images_with_latest_status(session)
    columns = ["id", "name", "path", "last_status", "last_checked_at", "last_confidence", "last_findings_count",
               "last_duration_ms", "critical", "interval_s", "auto_heal_enabled", "marked_bad", "consecutive_heal_failures"]
    return pd.DataFrame.from_records(rows, columns=columns)


IMAGE_LIST_COLUMNS = ("id", "name", "path", "last_status", "last_checked_at", "last_confidence", "last_findings_count",
                      "last_duration_ms", "critical", "interval_s", "auto_heal_enabled", "marked_bad",
                      "consecutive_heal_failures")


def _image_filters(statuses: list[str] | None, contains: str | None) -> list[Any]:
    i = Image.__table__.c
    filters: list[Any] = []
    if statuses:
        filters.append(i.last_status.in_(statuses))
    if contains:
        filters.append(sa.or_(i.path.contains(contains, autoescape=True), i.name.contains(contains, autoescape=True)))
    return filters


def images_page(url: str | None = None, *, statuses: list[str] | None = None, contains: str | None = None,
                offset: int = 0, limit: int = 50) -> tuple[pd.DataFrame, int]:
    """One page of registered images (by path) with their latest check, and how many match in all.

    The list is read a page at a time (LIMIT/OFFSET on the path index): 10,000 images cost what 50 do.
    ``contains`` matches the path or the name as a literal substring."""
    i = Image.__table__.c
    c = Check.__table__.c
    filters = _image_filters(statuses, contains)
    query = (sa.select(i.id, i.name, i.path, i.last_status, i.last_checked_at, c.confidence.label("last_confidence"),
                       c.findings.label("last_findings"), c.duration_ms.label("last_duration_ms"), i.critical,
                       i.interval_s, i.auto_heal_enabled, i.marked_bad, i.consecutive_heal_failures)
             .select_from(Image.__table__.outerjoin(Check.__table__, c.id == i.last_check_id))
             .where(*filters).order_by(i.path).offset(max(0, offset)).limit(max(1, limit)))
    with session_scope(url, write=False) as session:
        rows = _rows(session.execute(query))
        total = int(session.execute(sa.select(sa.func.count()).select_from(Image.__table__).where(*filters)).scalar_one())
    for row in rows:
        findings = row.pop("last_findings")
        row["last_findings_count"] = len(findings) if isinstance(findings, list) else None
    return pd.DataFrame.from_records(rows, columns=list(IMAGE_LIST_COLUMNS)), total


def image_label(url: str | None = None, *, image_id: int) -> str | None:
    """'name — path' of one registered image, or None."""
    i = Image.__table__.c
    with session_scope(url, write=False) as session:
        row = session.execute(sa.select(i.name, i.path).where(i.id == image_id)).first()
    return None if row is None else f"{row.name or short_name(row.path)}  —  {row.path}"


def image_detail(url: str | None = None, *, image_id: int, history_limit: int = 500) -> dict[str, Any] | None:
    """Everything the image detail view shows: the image row, its latest check, trend history,
    recent heals and the run-now requests that name it. None when the image is not registered."""
    with session_scope(url, write=False) as session:
        image = queries.get_image(session, image_id=image_id)
        if image is None:
            return None
        image.pop("baseline", None)  # large (per-block hashes); the page does not show it
        r = RunRequest.__table__.c
        requests = _rows(session.execute(
            sa.select(r.id, r.kind, r.status, r.requested_by, r.claimed_by, r.created_at, r.started_at, r.finished_at,
                      r.result)
            .where(r.target == image["path"]).order_by(r.created_at.desc(), r.id.desc()).limit(20)
        ))
        return {
            "image": image,
            "latest_check": queries.latest_check(session, image_id),
            "history": queries.check_history_frame(session, image_id, limit=history_limit),
            "heals": queries.recent_heals(session, image_id=image_id, limit=20),
            "requests": requests,
        }


# --------------------------------------------------------------------------- tuning

def tuning_intents(url: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
    """Observer intents, newest first."""
    t = TuningIntent.__table__.c
    with session_scope(url, write=False) as session:
        return _rows(session.execute(sa.select(TuningIntent.__table__).order_by(t.created_at.desc(), t.id.desc()).limit(limit)))


def tuning_runs(url: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs, newest first, each with its candidates (best score first) under "candidates"."""
    r = TuningRun.__table__.c
    c = TuningCandidate.__table__.c
    with session_scope(url, write=False) as session:
        runs = _rows(session.execute(sa.select(TuningRun.__table__).order_by(r.started_at.desc(), r.id.desc()).limit(limit)))
        ids = [run["id"] for run in runs]
        candidates = _rows(session.execute(
            sa.select(TuningCandidate.__table__).where(c.run_id.in_(ids)).order_by(c.run_id, c.score.desc().nulls_last(), c.id)
        )) if ids else []
    by_run: dict[int, list[dict[str, Any]]] = {run_id: [] for run_id in ids}
    for candidate in candidates:
        by_run[candidate["run_id"]].append(candidate)
    for run in runs:
        run["candidates"] = by_run[run["id"]]
    return runs


PROMOTION_WORDS = {"pending_review": "waiting for review", "approved": "approved", "applied": "applied",
                   "rejected": "rejected", "expired": "expired", "failed": "failed to apply",
                   "rolled_back": "rolled back"}
# What became of an intent whose run proposed a promotion, once that promotion is decided: the intent's
# stored outcome (CONFIG_TUNED) was written when the promotion was only proposed.
PROMOTION_INTENT_OUTCOME = {"pending_review": "CONFIG_TUNED", "approved": "CONFIG_TUNED", "applied": "CONFIG_TUNED",
                            "rejected": "REJECTED", "expired": "EXPIRED", "failed": "CONFIG_TUNING_FAILED",
                            "rolled_back": "ROLLED_BACK"}


def promotions_by_run(url: str | None = None, run_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """The newest promotion of each run (id, status, decided_by, decided_at, applied_at), by run id."""
    p = Promotion.__table__.c
    query = sa.select(p.id, p.run_id, p.status, p.decided_by, p.decided_at, p.applied_at).where(p.run_id.is_not(None))
    if run_ids is not None:
        query = query.where(p.run_id.in_(run_ids))
    with session_scope(url, write=False) as session:
        found: dict[int, dict[str, Any]] = {}
        for row in _rows(session.execute(query.order_by(p.id))):
            found[row["run_id"]] = row
    return found


def promotion_state_line(promotion: dict[str, Any]) -> str:
    """'promotion #3 applied by alice' — the promotion's current state in a few words."""
    who = f" by {promotion['decided_by']}" if promotion.get("decided_by") and promotion["status"] != "pending_review" else ""
    return f"promotion #{promotion['id']} {PROMOTION_WORDS.get(promotion['status'], promotion['status'])}{who}"


def intent_outcome(intent: dict[str, Any], promotion: dict[str, Any] | None) -> str:
    """The intent's outcome as it stands now: a decided promotion overrides the CONFIG_TUNED its run wrote."""
    stored = intent.get("outcome") or "—"
    if promotion is None:
        return stored
    return f"{PROMOTION_INTENT_OUTCOME.get(promotion['status'], stored)} ({promotion_state_line(promotion)})"


def tuning_blocked(url: str | None = None, *, limit: int = 50) -> list[dict[str, Any]]:
    """Failures the tuning loop saw but could not act on (cooldown, rate limit), newest first: one row
    per episode with how often it repeated."""
    from storage.models import TuningBlocked

    b = TuningBlocked.__table__.c
    with session_scope(url, write=False) as session:
        return _rows(session.execute(sa.select(TuningBlocked.__table__).order_by(b.last_seen.desc(), b.id.desc())
                                     .limit(limit)))


# --------------------------------------------------------------------------- promotions

def promotions(url: str | None = None, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Promotions newest first (optionally one status), each with its candidate's score when known."""
    with session_scope(url, write=False) as session:
        rows = queries.list_promotions(session, status=status, limit=limit)
        ids = [p["candidate_id"] for p in rows if p["candidate_id"] is not None]
        c = TuningCandidate.__table__.c
        scores = {row.id: row for row in session.execute(
            sa.select(c.id, c.score, c.score_breakdown).where(c.id.in_(ids)))} if ids else {}
        runs = [p["run_id"] for p in rows if p["run_id"] is not None]
        r, i = TuningRun.__table__.c, TuningIntent.__table__.c
        intents = {row.run_id: row for row in session.execute(
            sa.select(r.id.label("run_id"), i.error_class, i["values"], i.evidence, i.source)
            .select_from(TuningRun.__table__.join(TuningIntent.__table__, r.intent_id == i.id))
            .where(r.id.in_(runs)))} if runs else {}
    for row in rows:
        found = scores.get(row["candidate_id"])
        row["score"] = found.score if found is not None else None
        row["score_breakdown"] = found.score_breakdown if found is not None else None
        intent = intents.get(row["run_id"])
        row["intent"] = dict(intent._mapping) if intent is not None else None
    return rows


# canary metric (score_breakdown["metrics"] key) → (label, unit)
CANARY_METRICS = (("latency_p50_ms", "latency p50", "ms"), ("latency_p95_ms", "latency p95", "ms"),
                  ("throughput_tps", "throughput", "tokens/s"), ("error_rate", "error rate", ""),
                  ("kv_cache_usage_max", "KV cache usage (max)", ""), ("kv_headroom", "KV headroom", ""),
                  ("preemptions", "preemptions", ""), ("requests_waiting_max", "requests waiting (max)", ""))


def canary_evidence(breakdown: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The canary's measured numbers next to what they were judged against (the baseline run's value, or
    the target when no baseline ran) and the judge's verdict, one row per metric the canary reported."""
    breakdown = breakdown or {}
    measured = breakdown.get("metrics") or {}
    judged = {entry.get("metric"): entry for entry in (breakdown.get("per_metric") or {}).values()
              if isinstance(entry, dict)}
    rows = []
    for key, label, unit in CANARY_METRICS:
        if key not in measured or measured[key] is None:
            continue
        entry = judged.get(key) or {}
        reference = entry.get("reference")
        rows.append({"metric": label + (f" ({unit})" if unit else ""), "canary": _plain(measured[key]),
                     "compared with": "—" if reference is None else f"{_plain(reference)} ({entry.get('against', '?')})",
                     "verdict": entry.get("classification") or "not judged", "why": entry.get("why") or "—"})
    return rows


def promotion(url: str | None, promotion_id: int) -> dict[str, Any] | None:
    """One promotion row as a dict, or None."""
    with session_scope(url, write=False) as session:
        row = session.get(Promotion, promotion_id)
        return row.model_dump() if row is not None else None


def value_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> pd.DataFrame:
    """Old and new values side by side, one row per parameter (union of both sides, sorted)."""
    old, new = old or {}, new or {}
    keys = sorted(set(old) | set(new))
    return pd.DataFrame({
        "parameter": keys,
        "current": [_plain(old.get(k)) for k in keys],
        "proposed": [_plain(new.get(k)) for k in keys],
        "changed": [old.get(k) != new.get(k) for k in keys],
    })


def _plain(value: Any) -> str:
    """One display cell: JSON for containers, '—' for missing, text otherwise (mixed types break Arrow)."""
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


# --------------------------------------------------------------------------- audit

ROUTINE_AUDIT_KINDS = ("check", "check.sampled")  # the periodic checks: "hide routine" leaves them out


def audit_filter_args(*, kind: str | None = None, subject: str | None = None, actor: str | None = None,
                      hide_routine: bool = False, start: datetime | None = None,
                      end: datetime | None = None) -> dict[str, Any]:
    """The Audit page's filters as storage.queries.audit_filters arguments: the subject matches as a
    substring ("kernel.rts.png" finds the events of /x/y/kernel.rts.png); "hide routine" leaves out the
    periodic checks unless that kind is asked for explicitly."""
    return {"kind": kind, "subject": subject, "start": start, "end": end, "actor": actor, "subject_contains": True,
            "exclude_kinds": ROUTINE_AUDIT_KINDS if hide_routine and not kind else ()}


def audit_page(url: str | None = None, *, offset: int = 0, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """One page of matching audit events, highest sequence first (payload decoded); filters as audit_filter_args."""
    with session_scope(url, write=False) as session:
        return queries.audit_page(session, offset=offset, limit=limit, **filters)


def audit_count(url: str | None = None, **filters: Any) -> int:
    """How many audit events match the filters."""
    with session_scope(url, write=False) as session:
        return queries.audit_count(session, **filters)


def audit_actors(url: str | None = None) -> list[str]:
    """Distinct actors of the audit trail, sorted (for the actor filter)."""
    a = AuditEvent.__table__.c
    with session_scope(url, write=False) as session:
        return [row[0] for row in session.execute(sa.select(a.actor).distinct().order_by(a.actor)) if row[0]]


def payload_summary(payload: Any, *, max_value: int = 60, max_chars: int = 240) -> str:
    """An audit payload as one readable line: ``key=value · key=value`` with nested objects flattened
    one level (``old.gpu_memory_utilization=0.8``), lists as their length, long values shortened with
    "…" — never JSON cut in the middle. The full payload is still in the event's detail and the CSV."""
    if not isinstance(payload, dict):
        return _short(payload, max_chars)
    parts: list[str] = []
    for key, value in payload.items():
        if isinstance(value, dict):
            inner = [f"{key}.{k}={_short(v, max_value)}" for k, v in value.items() if not isinstance(v, dict | list)]
            parts.extend(inner or [f"{key}={{{len(value)} keys}}"])
        elif isinstance(value, list):
            parts.append(f"{key}=[{len(value)} item{'s' if len(value) != 1 else ''}]" if len(value) != 1 or
                         isinstance(value[0], dict | list) else f"{key}={_short(value[0], max_value)}")
        elif value is not None:
            parts.append(f"{key}={_short(value, max_value)}")
    line = " · ".join(parts)
    return line if len(line) <= max_chars else line[: max_chars - 1].rstrip(" ·") + "…"


def _short(value: Any, limit: int) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def audit_kinds(url: str | None = None) -> list[str]:
    """Distinct audit kinds, for the filter."""
    with session_scope(url, write=False) as session:
        return queries.audit_kinds(session)


AUDIT_CSV_COLUMNS = ("seq", "created_at", "kind", "subject", "actor", "payload", "hash", "prev_hash")


def audit_csv(url: str | None = None, *, kind: str | None = None, subject: str | None = None,
              start: datetime | None = None, end: datetime | None = None, max_rows: int = 100_000,
              **more: Any) -> str:
    """The matching audit events (highest sequence first, at most ``max_rows``) as CSV text with a header.

    The payload column is the canonical JSON exactly as hashed, so an export can be re-verified — after
    removing the apostrophe :func:`dashboard.exports.spreadsheet_safe` puts before any cell that begins
    with = + - @ tab or CR (so that a spreadsheet shows it as text instead of running it as a formula).
    """

    a = AuditEvent.__table__.c
    filters = queries.audit_filters(kind, subject, start, end, **more)
    query = (sa.select(*(getattr(a, col) for col in AUDIT_CSV_COLUMNS)).where(*filters)
             .order_by(a.seq.desc(), a.id.desc()).limit(max_rows))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(AUDIT_CSV_COLUMNS)
    with session_scope(url, write=False) as session:
        for row in session.execute(query):
            created = row.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
            writer.writerow([spreadsheet_safe(cell) for cell in (row.seq, created, row.kind, row.subject, row.actor,
                                                                 row.payload, row.hash, row.prev_hash)])
    return out.getvalue()


def audit_head(url: str | None = None) -> dict[str, Any]:
    """The chain's recorded tail {"seq", "last_hash"} (seq 0 for an empty chain): cheap cache key."""
    with session_scope(url, write=False) as session:
        head = session.get(AuditHead, 1)
        return {"seq": head.seq if head else 0, "last_hash": head.last_hash if head else None}


def verify_audit_chain(url: str | None = None) -> dict[str, Any]:
    """storage.audit.verify_chain as plain data, plus when it ran and the one-line summary."""
    from storage.audit import verify_chain

    with session_scope(url, write=False) as session:
        report = verify_chain(session)
    return {**report.as_dict(), "summary": report.summary(), "verified_at": utcnow()}


def status_counts_complete(counts: dict[str, int]) -> dict[str, int]:
    """The four status counts in display order, zero-filled (fleet_summary may grow more keys)."""
    return {status: int(counts.get(status, 0)) for status in CHECK_STATUSES}


def now_utc() -> datetime:
    """The dashboard's clock (UTC)."""
    return utcnow()
