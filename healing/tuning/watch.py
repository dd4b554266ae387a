"""The post-promotion watch: an applied promotion is verified against the real service or rolled back.

After a promotion is written and the service reloaded, the service is watched for
``tuning.verify_window_s`` (default 600 s) — the analysis step of a progressive rollout (Argo Rollouts,
Flagger) applied to one service:

* **health**: ``tuning.watch.health_url`` is probed on every poll. Until the first healthy answer a
  refused connection means "still starting" (vLLM listens only once the engine is ready) and is
  tolerated for ``start_timeout_s``; an HTTP error status always counts. ``unhealthy_probes``
  consecutive failures → rollback.
* **log**: the configured ``tuning.log_sources`` of the promotion's subsystem, read from where they
  stood just before the apply (the watch keeps its own positions), through the Observer: any failure
  it reports (a memory error, an engine that died) → rollback, except the classes in
  ``ignore_classes`` (default ``kv_cache_preemption``: pressure, judged by the metrics below).
* **metrics**: ``tuning.watch.metrics_url`` (vLLM's Prometheus ``/metrics``), compared with the values
  read just before the apply: ``vllm:num_requests_waiting`` above max(``waiting_min``, before ×
  ``waiting_factor``), or ``vllm:num_preemptions_total`` rising faster than ``preemptions_per_min``,
  on ``regression_polls`` consecutive polls → rollback.

A rollback restores the backup taken at the apply, runs the reload command, marks the promotion
``rolled_back`` with the reason and raises a critical ``tuning_rollback`` alert; the main log follower
is moved past the lines the watch read (they were the rolled-back config's failure, not a new intent
against the restored values). A window that passes marks the watch ``verified``. Each step is an audit event (promotion.watch_started, watch_failed,
file_restored, reload, rolled_back, watch_rolled_back / watch_verified).

Nothing here blocks for the window: the watch is a database row (promotion, until, baseline, probe
state) and :func:`check_watches` is one short pass over the running watches — the worker's
``tuning-watch`` job every ``tuning.watch.poll_s`` seconds, each ``selfheal tune run`` cycle and
``selfheal tune watch``. A restarted process simply continues from the row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from healing.errors import SelfHealError

if TYPE_CHECKING:
    from sqlmodel import Session

    from healing.config import Settings
    from healing.tuning.actuators import TuningSettings
    from healing.tuning.runner_config import RunnerSettings

log = logging.getLogger("selfheal.tuning.watch")

ACTOR = "tuning (watch)"
ALERT_KIND = "tuning_rollback"
KIND_WATCH_FAILED = "promotion.watch_failed"
METRICS = {"waiting": "vllm:num_requests_waiting", "running": "vllm:num_requests_running",
           "preemptions": "vllm:num_preemptions_total", "kv_cache_usage": "vllm:kv_cache_usage_perc"}
LOG_READ_BYTES = 8 << 20  # per source and poll; the rest on the next poll
MAX_RESPONSE_BYTES = 4 << 20


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


# --------------------------------------------------------------------------- probes

def probe_health(url: str, timeout: float) -> dict[str, Any]:
    """GET the health URL: {"ok", "status" (None: no answer), "detail"}; 200 is healthy."""
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return {"ok": False, "status": None, "detail": f"no answer ({type(exc).__name__})"}
    return {"ok": response.status_code == 200, "status": response.status_code, "detail": f"HTTP {response.status_code}"}


def parse_metrics(text: str) -> dict[str, float]:
    """The vLLM numbers of a Prometheus text page, summed over label sets (engines, models)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {name: key for key, name in METRICS.items()}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is not None:
                out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def scrape_metrics(url: str, timeout: float) -> tuple[dict[str, float] | None, str | None]:
    """(numbers, None) or (None, one-line reason)."""
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return None, f"{url}: no answer ({type(exc).__name__})"
    if response.status_code != 200:
        return None, f"{url}: HTTP {response.status_code}"
    try:
        return parse_metrics(response.text[:MAX_RESPONSE_BYTES]), None
    except ValueError as exc:
        return None, f"{url}: not Prometheus text ({' '.join(str(exc).split())[:120]})"


def log_positions(runner: RunnerSettings, subsystem: str) -> dict[str, dict[str, int | None]]:
    """Where each log source of ``subsystem`` ends now ({path: {inode, offset}}); a missing file starts at 0."""
    out: dict[str, dict[str, int | None]] = {}
    for src in runner.log_sources:
        if src.subsystem != subsystem:
            continue
        try:
            st = os.stat(src.path)
            out[str(src.path)] = {"inode": st.st_ino, "offset": st.st_size}
        except OSError:
            out[str(src.path)] = {"inode": None, "offset": 0}
    return out


def capture_baseline(runner: RunnerSettings, subsystem: str, now: datetime | None = None) -> dict[str, Any]:
    """What the watch compares with, read just before the apply: /metrics and the log positions."""
    settings = runner.watch
    metrics, error = (scrape_metrics(settings.metrics_url, settings.probe_timeout_s) if settings.metrics_url
                      else (None, None))
    return {"metrics": metrics, "metrics_error": error, "logs": log_positions(runner, subsystem),
            "at": _now(now).isoformat()}


def start_watch(session: Session, promo: Mapping[str, Any], runner: RunnerSettings, baseline: Mapping[str, Any],
                now: datetime) -> dict[str, Any] | None:
    """Record the watch of a just-applied promotion (None when verify_window_s is 0)."""
    from storage import tuning_queries as tq

    settings = runner.watch
    for other in tq.active_watches(session):
        if other["subsystem"] == promo["subsystem"] and int(other["promotion_id"]) != int(promo["id"]):
            # a newer change to the same service: the older watch's verdict (and rollback) no longer applies
            tq.finish_watch(session, int(other["promotion_id"]), "stopped", now=now,
                            reason=f"superseded by promotion {promo['id']} before its window ended")
    if settings.verify_window_s <= 0:
        return None
    progress = {"logs": dict(baseline.get("logs") or {}), "failures": 0, "probes": 0, "healthy_at": None,
                "last_probe": None, "regressions": 0, "first_metrics": None}
    return tq.create_watch(
        session, promotion_id=int(promo["id"]), subsystem=str(promo["subsystem"]),
        until=now + timedelta(seconds=settings.verify_window_s),
        baseline={"metrics": baseline.get("metrics"), "metrics_error": baseline.get("metrics_error"), "at": baseline.get("at")},
        progress=progress, now=now,
        detail={"verify_window_s": settings.verify_window_s, "health_url": settings.health_url,
                "metrics_url": settings.metrics_url, "log_sources": sorted(progress["logs"])})


# --------------------------------------------------------------------------- one pass

def _read_logs(positions: Mapping[str, Any], tuning: TuningSettings, ignore: tuple[str, ...]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """New lines of each watched log through the Observer: (new positions, failures not ignored)."""
    from healing.tuning.follower import FollowerState, LogFollower
    from healing.tuning.observer import observe_lines

    new_positions: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    for path, saved in positions.items():
        state = FollowerState.from_dict(saved) if isinstance(saved, dict) and saved.get("inode") is not None else None
        follower = LogFollower(path, state=state, max_bytes=LOG_READ_BYTES)
        try:
            lines = follower.read_new_lines()
            new_positions[path] = follower.state.to_dict()
        except OSError as exc:
            log.warning("watch: cannot read %s: %s", path, exc)
            new_positions[path] = saved
            continue
        finally:
            follower.close()
        if not lines:
            continue
        for event in observe_lines(lines, settings=tuning):
            if event.event_class in ignore:
                continue
            failures.append({"class": event.event_class, "source": path, "reason": event.reason,
                             "evidence": [{"line": n, "text": t[:300]} for n, t in event.evidence][:5]})
    return new_positions, failures


def _regression(settings: Any, baseline: Mapping[str, float] | None, first: Mapping[str, Any] | None,
                current: Mapping[str, float], now: datetime) -> str | None:
    """A critical metric regression against the values before the apply, or None."""
    before = baseline or {}
    waiting = current.get("waiting")
    if waiting is not None:
        limit = max(settings.waiting_min, float(before.get("waiting") or 0.0) * settings.waiting_factor)
        if waiting > limit:
            return (f"vllm:num_requests_waiting {waiting:g} > {limit:g} (before the apply {float(before.get('waiting') or 0):g}, "
                    f"limit max({settings.waiting_min:g}, {settings.waiting_factor:g}x))")
    count = current.get("preemptions")
    if count is not None:
        # since the apply when the counter kept counting (no restart), else since the first sample of the new process
        ref_count, ref_at = before.get("preemptions"), before.get("_at")
        if ref_count is None or count < float(ref_count) or ref_at is None:
            ref_count, ref_at = (first or {}).get("preemptions"), (first or {}).get("_at")
        if ref_count is not None and ref_at is not None:
            minutes = (now - datetime.fromisoformat(str(ref_at))).total_seconds() / 60
            if minutes > 0:
                rate = (count - float(ref_count)) / minutes
                if rate > settings.preemptions_per_min:
                    return (f"vllm:num_preemptions_total rising {rate:.1f}/min since the apply "
                            f"(limit {settings.preemptions_per_min:g}/min)")
    return None


def check_watch(settings: Settings, watch: Mapping[str, Any], runner: RunnerSettings, tuning: TuningSettings,
                now: datetime | None = None) -> dict[str, Any]:
    """One poll of one watch: probe, read the log, scrape, decide. Returns {"promotion_id", "state", "reason", …}."""
    from storage import tuning_queries as tq
    from storage.engine import session_scope

    now = _now(now)
    ws = runner.watch
    pid = int(watch["promotion_id"])
    progress = dict(watch.get("progress") or {})
    started = watch["started_at"]
    findings: list[str] = []
    evidence: dict[str, Any] = {}

    # observe outside any transaction: probes may take the whole timeout
    positions, log_failures = _read_logs(progress.get("logs") or {}, tuning, ws.ignore_classes)
    progress["logs"] = positions
    if log_failures:
        first = log_failures[0]
        line = first["evidence"][-1]["text"] if first["evidence"] else ""
        findings.append(f"{first['class']} in {first['source']}: {line}".strip())
        evidence["log"] = log_failures
    if ws.health_url:
        probe = probe_health(ws.health_url, ws.probe_timeout_s)
        progress["probes"] = int(progress.get("probes") or 0) + 1
        progress["last_probe"] = probe["detail"]
        if probe["ok"]:
            progress["failures"] = 0
            progress["healthy_at"] = progress.get("healthy_at") or now.isoformat()
        elif progress.get("healthy_at") is None and probe["status"] is None:
            waited = (now - started).total_seconds()
            if waited >= ws.start_timeout_s:
                findings.append(f"{ws.health_url} not healthy {waited:.0f} s after the apply "
                                f"(start_timeout_s {ws.start_timeout_s:g}; last probe: {probe['detail']})")
        else:
            progress["failures"] = int(progress.get("failures") or 0) + 1
            if progress["failures"] >= ws.unhealthy_probes:
                findings.append(f"{ws.health_url} unhealthy on {progress['failures']} consecutive probes "
                                f"(last: {probe['detail']})")
        evidence["health"] = {"url": ws.health_url, "last": probe["detail"], "failures": progress["failures"]}
    if ws.metrics_url and not findings:
        current, error = scrape_metrics(ws.metrics_url, ws.probe_timeout_s)
        if current is not None:
            stamped = {**current, "_at": now.isoformat()}
            progress["first_metrics"] = progress.get("first_metrics") or stamped
            progress["last_metrics"] = stamped
            baseline = dict((watch.get("baseline") or {}).get("metrics") or {})
            if baseline:
                baseline["_at"] = (watch.get("baseline") or {}).get("at")
            problem = _regression(ws, baseline or None, progress["first_metrics"], current, now)
            progress["regressions"] = int(progress.get("regressions") or 0) + 1 if problem else 0
            if problem and progress["regressions"] >= ws.regression_polls:
                findings.append(f"critical metric regression on {progress['regressions']} consecutive polls: {problem}")
                evidence["metrics"] = {"before": baseline, "now": current}
        else:
            progress["last_metrics_error"] = error

    healthy_now = not ws.health_url or (progress.get("healthy_at") is not None and progress.get("failures") == 0)
    with session_scope() as session:
        row = tq.get_watch(session, pid)
        if row is None or row["state"] != "watching":
            return {"promotion_id": pid, "state": row["state"] if row else None, "reason": "already finished"}
        tq.update_watch(session, pid, progress=progress, now=now)
        if findings:
            reason = "; ".join(findings)
            from storage.audit import append_event
            from storage.tuning_queries import audit_safe

            append_event(session, KIND_WATCH_FAILED, str(watch["subsystem"]), audit_safe({
                "promotion_id": pid, "reason": reason, "evidence": evidence, "at_s": (now - started).total_seconds()}),
                ACTOR, now=now)
            from healing.tuning.promotions import rollback_promotion

            try:
                promo = rollback_promotion(session, pid, ACTOR, reason=f"watch failed: {reason}", settings=settings,
                                           now=now, automatic=True, evidence=evidence)
            except SelfHealError as exc:
                # the file could not be put back: stop watching (no retry storm) and say so loudly
                from storage import queries

                tq.finish_watch(session, pid, "stopped", reason=f"rollback failed: {exc}", actor=ACTOR, now=now)
                alert = queries.record_alert(
                    session, kind=ALERT_KIND, severity="critical", subject=f"{watch['subsystem']}: promotion {pid}",
                    reason="rollback_failed", message=f"watch failed ({reason}) and the rollback failed: {exc}",
                    webhook=settings.healing.notification.enabled, actor=ACTOR, now=now)
                return {"promotion_id": pid, "state": "stopped", "reason": f"rollback failed: {exc}", "alert_id": alert["id"]}
            from healing.tuning.sources import skip_to

            # the lines read so far were the rolled-back config's: not an intent against the restored values
            skipped = skip_to(settings, progress.get("logs") or {})
            return {"promotion_id": pid, "state": "rolled_back", "reason": reason, "skipped_logs": skipped,
                    "alert_id": promo["rollback"].get("alert_id"), "reload_problem": promo["rollback"].get("reload_problem")}
        if now >= row["until"] and healthy_now:
            text = (f"verified: {(now - started).total_seconds():.0f} s after the apply without a failure"
                    + (f" ({progress.get('probes', 0)} health probes)" if ws.health_url else ""))
            tq.finish_watch(session, pid, "verified", reason=text, actor=ACTOR, now=now,
                            detail={"last_probe": progress.get("last_probe"), "last_metrics": progress.get("last_metrics")})
            return {"promotion_id": pid, "state": "verified", "reason": text}
    return {"promotion_id": pid, "state": "watching", "reason": progress.get("last_probe") or "watching",
            "until": row["until"]}


def check_watches(settings: Settings | None = None, now: datetime | None = None, *, notifier: Any | None = None
                  ) -> list[dict[str, Any]]:
    """One pass over every running watch (the worker's tuning-watch job, ``tune run``, ``tune watch``)."""
    from healing.config import load_settings
    from healing.tuning.actuators import parse_tuning_section
    from healing.tuning.runner_config import parse_runner_settings
    from storage import tuning_queries as tq
    from storage.engine import session_scope

    settings = settings or load_settings()
    section = settings.section("tuning")
    runner = parse_runner_settings(section)
    tuning = parse_tuning_section(section)
    with session_scope(write=False) as session:
        watches = tq.active_watches(session)
    results = [check_watch(settings, w, runner, tuning, now) for w in watches]
    deliver_alerts(settings, [r["alert_id"] for r in results if r.get("alert_id")], notifier)
    return results


def deliver_alerts(settings: Settings, alert_ids: list[int], notifier: Any | None = None) -> None:
    """Hand alerts to the webhook notifier when notifications are on (bounded wait when we own it)."""
    if not alert_ids or not settings.healing.notification.enabled:
        return
    from healing.images.notify import WebhookNotifier

    own = notifier or WebhookNotifier(settings.healing.notification)
    for alert_id in alert_ids:
        own.submit(alert_id)
    if notifier is None:
        own.close(timeout=settings.healing.notification.timeout * 2)
