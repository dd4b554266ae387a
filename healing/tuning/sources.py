"""Configured log sources → Observer events → intents (or escalations), with a flood guard.

Each ``tuning.log_sources`` file is followed across rotation by a
:class:`~healing.tuning.follower.LogFollower`; its ``(inode, offset)`` is persisted in
``$SELFHEAL_HOME/tuning/log_sources.json`` after every read, so a restarted worker continues where the
last one stopped instead of re-reading old failures. A file lock serialises readers (threads and
processes), so two callers never consume the same lines.

Each cycle drains a source: reads of at most ``READ_BYTES`` are repeated until nothing new is left or
``DRAIN_SECONDS`` have passed (the rest waits for the next cycle). The new lines of one read go through a
fresh Observer (a vLLM failure is written at once, so a
read holds the whole traceback) and each event is then:

* suppressed when its (subsystem, class) fired within ``tuning.observer.cooldown_seconds``: the
  in-process :class:`~healing.tuning.observer.Cooldown` answers first, the newest stored intent of
  that key covers restarts and other processes; a suppressed repeat is still stored and alerted once
  per cooldown episode (healing.tuning.blocked), so a blocked loop is never silent;
* an **escalation** when the Observer escalates (or no actuator applies): an intent archived as
  ESCALATED plus an alert (reason ``out_of_bounds`` or ``no_actuator``) for the database and webhook;
* otherwise an open **intent** for the runner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healing.tuning.candidates import direction_for
from healing.tuning.follower import FollowerState, LogFollower
from healing.tuning.observer import PROFILING_ERROR, Cooldown, ObserverEvent, observe_lines

if TYPE_CHECKING:
    from healing.config import Settings
    from healing.tuning.actuators import TuningSettings
    from healing.tuning.runner_config import RunnerSettings

STATE_FILE = "log_sources.json"
ALERT_KIND = "tuning_escalation"
READ_BYTES = 8 << 20  # one read of the follower (one Observer batch)
DRAIN_SECONDS = 5.0  # per source and cycle: read again until nothing new or this much time has passed
_clock = time.monotonic

_cooldowns: dict[tuple[str, float], Cooldown] = {}
_cooldowns_lock = threading.Lock()


def tuning_dir(settings: Settings) -> Path:
    path = settings.home / "tuning"
    path.mkdir(parents=True, exist_ok=True)
    return path


def process_cooldown(settings: Settings, seconds: float) -> Cooldown:
    """The in-process Cooldown of this database (wall clock, so it agrees with stored intent times)."""
    key = (settings.database_url, float(seconds))
    with _cooldowns_lock:
        if key not in _cooldowns:
            _cooldowns[key] = Cooldown(seconds, clock=time.time)
        return _cooldowns[key]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def escalation_reason(event: ObserverEvent) -> str:
    """``no_actuator`` when no setting of ours can help (environment problems), else ``out_of_bounds``."""
    if event.event_class == PROFILING_ERROR or direction_for(event.event_class) is None or "no setting of ours" in event.reason:
        return "no_actuator"
    return "out_of_bounds"


def intent_values(event: ObserverEvent) -> dict[str, Any]:
    """The numbers of the event, plus the Observer's alternative fixes and the vLLM version (``_`` keys)."""
    values: dict[str, Any] = dict(event.values)
    if event.alternatives:
        values["_alternatives"] = [dict(a) for a in event.alternatives]
    if event.version:
        values["_version"] = event.version
    return values


def record_event(settings: Settings, event: ObserverEvent, *, source: str, subsystem: str, cooldown_s: float,
                 now: datetime | None = None) -> dict[str, Any]:
    """Turn one Observer event into an intent or an escalation; {"action": "intent"|"escalated"|"suppressed", …}."""
    from healing.tuning.blocked import note_blocked
    from storage import queries
    from storage import tuning_queries as tq
    from storage.engine import session_scope

    now = now or datetime.now(UTC)
    cls = event.event_class
    cooldown = process_cooldown(settings, cooldown_s)
    webhook = settings.healing.notification.enabled
    if not cooldown.allow(subsystem, cls):
        # nothing silent: the repeat is stored (one row per cooldown episode) and alerted once
        until = now + timedelta(seconds=cooldown.remaining(subsystem, cls))
        with session_scope() as session:
            blocked = note_blocked(session, subsystem=subsystem, error_class=cls, cause="cooldown", until=until,
                                   reason=f"the same failure fired less than {cooldown_s:g} s ago", webhook=webhook,
                                   actor="observer", now=now)
        return {"action": "suppressed", "class": cls, "why": "cooldown (this process)", "blocked_id": blocked["id"],
                "alert_id": blocked.get("alert_id")}
    evidence = [{"line": n, "text": t} for n, t in event.evidence]
    with session_scope() as session:
        last = tq.last_intent_at(session, subsystem, cls)
        if last is not None and (now - last).total_seconds() < cooldown_s:
            blocked = note_blocked(session, subsystem=subsystem, error_class=cls, cause="cooldown",
                                   until=last + timedelta(seconds=cooldown_s), webhook=webhook, actor="observer", now=now,
                                   reason=f"intent at {last:%H:%M:%S} UTC, cooldown {cooldown_s:g} s")
            return {"action": "suppressed", "class": cls, "why": f"cooldown (intent at {last:%H:%M:%S} UTC)",
                    "blocked_id": blocked["id"], "alert_id": blocked.get("alert_id")}
        escalate = event.escalate or (not event.seed_fix and direction_for(cls) is None)
        if not escalate:
            intent = tq.create_intent(session, subsystem=subsystem, error_class=cls, values=intent_values(event),
                                      seed_fix=event.seed_fix, evidence=evidence, source=source, reason=event.reason, now=now)
            return {"action": "intent", "class": cls, "intent_id": intent["id"]}
        reason = escalation_reason(event)
        intent = tq.create_intent(session, subsystem=subsystem, error_class=cls, values=intent_values(event), seed_fix=None,
                                  evidence=evidence, source=source, reason=f"{reason}: {event.reason}", status="archived",
                                  outcome="ESCALATED", now=now)
        alert = queries.record_alert(session, kind=ALERT_KIND, severity="critical", subject=f"{subsystem}: {cls}",
                                     reason=reason, message=event.reason, webhook=settings.healing.notification.enabled,
                                     actor="observer", now=now)
    return {"action": "escalated", "class": cls, "intent_id": intent["id"], "alert_id": alert["id"], "reason": reason}


def skip_to(settings: Settings, positions: dict[str, Any]) -> list[str]:
    """Move the saved read positions of these sources forward to ``positions`` ({path: {inode, offset}}).

    After an automatic rollback the lines the watch read were the rolled-back config's: the Observer must
    not turn them into an intent against the restored values. A position is only moved forward within
    the same file (inode); returns the paths moved.
    """
    directory = tuning_dir(settings)
    state_path = directory / STATE_FILE
    moved: list[str] = []
    with _locked(directory / (STATE_FILE + ".lock")):
        state = _load_state(state_path)
        for path, pos in positions.items():
            if not isinstance(pos, dict) or pos.get("inode") is None:
                continue
            saved = state.get(path)
            if isinstance(saved, dict) and saved.get("inode") == pos["inode"] and int(saved.get("offset") or 0) >= int(pos["offset"]):
                continue
            if isinstance(saved, dict) and saved.get("inode") not in (None, pos["inode"]):
                continue  # the main follower is on another file (rotated): leave it
            state[path] = {**(saved if isinstance(saved, dict) else {}), "inode": pos["inode"], "offset": int(pos["offset"])}
            moved.append(path)
        if moved:
            _save_state(state_path, state)
    return moved


def observe_log_sources(settings: Settings, runner: RunnerSettings, tuning: TuningSettings,
                        current: dict[str, Any] | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """Read what the configured sources appended since the last call; returns one record per event."""
    if not runner.log_sources:
        return []
    directory = tuning_dir(settings)
    state_path = directory / STATE_FILE
    gpu_total = runner.gpu_profile.total_gib if runner.gpu_profile is not None else None
    out: list[dict[str, Any]] = []
    with _locked(directory / (STATE_FILE + ".lock")):
        state = _load_state(state_path)
        for src in runner.log_sources:
            key = str(src.path)
            saved = state.get(key)
            follower = LogFollower(src.path, start_at_end=src.start_at_end, max_bytes=READ_BYTES,
                                   state=FollowerState.from_dict(saved) if isinstance(saved, dict) else None)
            deadline = _clock() + DRAIN_SECONDS
            try:
                # drain: read (READ_BYTES at a time) until nothing new, so a log written at 100 MB/s is kept
                # up with; bounded by DRAIN_SECONDS per source, so one cycle cannot starve the worker
                while True:
                    lines = follower.read_new_lines()
                    state[key] = follower.state.to_dict()
                    # persist before acting: a crash below loses at most these events, never re-reads old lines
                    _save_state(state_path, state)
                    if not lines:
                        break
                    events = observe_lines(lines, settings=tuning, current=current or None, gpu_total_gib=gpu_total)
                    for event in events:
                        record = record_event(settings, event, source=key, subsystem=src.subsystem,
                                              cooldown_s=tuning.observer.cooldown_seconds, now=now)
                        record["source"] = key
                        out.append(record)
                    if _clock() >= deadline:
                        break  # the rest on the next cycle (the state says where)
            finally:
                follower.close()
    return out
