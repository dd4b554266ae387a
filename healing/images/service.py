"""Checking and healing registered images under the configured policy (what the worker runs).

One check of a registered image:
  1. stat and hash the file (always: bit rot that keeps size and mtime must still be caught);
  2. if size and sha256 equal the last check's and the image (golden copy, baseline) was not updated
     since, reuse that analysis (``reused_analysis``), else run the checker with the image's baseline;
  3. a file that differs from its golden copy but verifies (its own data hash holds) is a
     ``security`` finding — an unexpected change, not corruption — and the status is at least warning;
  4. record the check (audited); alert when the status turns critical, turns unknown (cannot be
     checked), or an unexpected change appears — once per transition, not at every check;
  5. heal when auto-heal applies: critical images, and changed-but-valid ones only with
     ``healing.revert_unexpected_changes``; never an image marked bad (until an operator acts).

A heal runs the custom actions (config ``healing.actions`` and those registered in Python) first, then
the parity repair (when the image has parity: rebuilt in memory, verified block by block and as a
whole, then quarantine copy and atomic replace), then the built-in golden restore (quarantine copy,
atomic replace, verify). Every action is a heal row.
After ``healing.max_heal_attempts`` consecutive failures the image is escalated: a critical alert,
``marked_bad``, and no more auto-heals until it is re-registered or healed explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.config import Settings
from healing.errors import SelfHealError, printable
from healing.images.actions import HealingAction, action_name, run_action
from healing.images.golden import GoldenStore, sha256_file
from healing.images.integrity import HealthStatus, finding, iso_now
from healing.images.registry import golden_ref, load_baseline, normalise_path
from healing.procs import pid_alive
from healing.safeio import describe_oserror, kind_of

log = logging.getLogger("selfheal.images")

SOURCE = "registry"  # findings added by this module (unexpected change, missing file)
KIND_HEAL_DECISION = "heal.decision"
KIND_QUARANTINE_PRUNED = "quarantine.pruned"


def default_checker(settings: Settings) -> Any:
    """The checker the worker, the CLI and the dashboard use: healing.analysis.VLMHealthChecker."""
    from healing.analysis import VLMHealthChecker

    return VLMHealthChecker(settings)


def result_object(data: dict[str, Any]) -> Any:
    """A HealthCheckResult (what healing actions receive) for a result known only as a dict:
    a reused analysis, an unreadable file, or a result this module adjusted."""
    from healing.analysis import HealthCheckResult

    return HealthCheckResult(
        image_path=str(data["image_path"]), status=HealthStatus(str(data.get("status") or "unknown")),
        confidence=float(data.get("confidence") or 0.0), metrics=dict(data.get("metrics") or {}),
        findings=[dict(f) for f in data.get("findings") or []], recommendation=str(data.get("recommendation") or ""),
        timestamp=str(data.get("timestamp") or ""), duration_ms=float(data.get("duration_ms") or 0.0))


@dataclass
class HealReport:
    """What one heal of one image did; ``healthy`` decides `selfheal heal`'s exit code."""

    image_path: str
    healthy: bool
    action: str  # none | custom:<name> | repair_parity | restore_golden
    message: str
    heal_ids: list[int] = field(default_factory=list)
    quarantine_path: str | None = None
    escalated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CheckRecord:
    """One recorded check of one file (registered or ad hoc) and the heal it triggered, if any."""

    image_path: str
    image_id: int | None
    result: dict[str, Any]
    check_id: int
    file_sha256: str | None
    reused: bool
    unexpected_change: bool
    heal: HealReport | None = None

    @property
    def status(self) -> str:
        return str(self.result["status"])

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "heal"}
        data["heal"] = self.heal.to_dict() if self.heal else None
        return data


def _result_dict(raw: Any) -> dict[str, Any]:
    data = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    status = data.get("status")
    data["status"] = getattr(status, "value", status) or "unknown"
    return data


def _unknown(path: str, message: str, status: str = "unknown", category: str = "structural",
             recommendation: str | None = None) -> dict[str, Any]:
    """The result for a file that could not be analysed (missing, a directory, unreadable)."""
    severity = "high" if status == "critical" else "medium"
    if recommendation is None:
        recommendation = "restore the image from its golden copy" if status == "critical" else "make the file readable"
    return {"image_path": path, "status": status, "confidence": 0.9 if status == "critical" else 0.0, "metrics": {},
            "findings": [finding(category, severity, message, source=SOURCE)], "recommendation": recommendation,
            "timestamp": iso_now(), "duration_ms": 0.0}


def _replaced(path: str, mode: int) -> dict[str, Any]:
    """The result for a registered image that is no longer a regular file: a security finding (someone
    put a symlink, FIFO or device where the image was), critical, and nothing behind it is read."""
    if stat.S_ISLNK(mode):
        try:
            target = printable(os.readlink(path))[:300]
        except OSError as exc:
            target = f"unreadable link: {describe_oserror(exc)}"
        what = f"a symbolic link (to {target}); the link is not followed"
    else:
        what = f"{kind_of(mode)}, not a regular file"
    return _unknown(path, f"{path}: registered image was replaced by {what}", "critical", "security",
                    "investigate who replaced the file; healing restores the golden copy in its place")


def _nonregular_findings(result: dict[str, Any] | None) -> set[str]:
    """Descriptions of the 'replaced by a non-regular file' findings in a check result."""
    return {str(f.get("description")) for f in (result or {}).get("findings") or []
            if f.get("category") == "security" and f.get("source") == SOURCE and "registered image was replaced" in
            str(f.get("description"))}


def _judged_before_update(last: dict[str, Any], image: dict[str, Any]) -> bool:
    """True when the image row (golden copy, baseline, policy) changed after ``last`` was checked: an
    accepted change or a re-registration. That analysis was judged against the old golden copy and
    baseline, so it must not be reused for the unchanged file (record_check never touches updated_at)."""
    checked, updated = last.get("created_at"), image.get("updated_at")
    return checked is not None and updated is not None and checked < updated


class ImageService:
    """Checks and heals registered images; thread-safe (the worker runs jobs in a thread pool)."""

    def __init__(
        self,
        settings: Settings,
        *,
        checker: Any | None = None,
        notifier: Any | None = None,
        actions: list[HealingAction] | None = None,
        auto_heal: bool | None = None,
        actor: str = "worker",
    ) -> None:
        self.settings = settings
        self.checker = checker if checker is not None else default_checker(settings)
        self.notifier = notifier
        self.actions: list[HealingAction] = list(actions or [])
        self.auto_heal = auto_heal  # None: config health_check.auto_heal or the image's own flag
        self.actor = actor
        self.store = GoldenStore(settings.golden_dir)
        self._baselines: dict[str, dict[str, Any] | None] = {}
        self._image_locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------------ helpers

    def _lock_for(self, image_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._image_locks.setdefault(image_id, threading.Lock())

    def _baseline(self, image: dict[str, Any]) -> dict[str, Any] | None:
        key = image.get("baseline_path") or ""
        if key not in self._baselines:
            # Baselines are content-addressed files, so a cached one never goes stale.
            self._baselines[key] = load_baseline(image)
        return self._baselines[key]

    def _alert(self, session: Any, kind: str, severity: str, subject: str, message: str, reason: str | None = None) -> int:
        from storage import queries

        webhook = bool(self.notifier is not None and self.notifier.enabled)
        row = queries.record_alert(session, kind=kind, severity=severity, subject=subject, message=message,
                                   reason=reason, webhook=webhook, actor=self.actor)
        return int(row["id"])

    def _deliver(self, alert_ids: list[int]) -> None:
        if self.notifier is not None:
            for alert_id in alert_ids:
                self.notifier.submit(alert_id)

    @staticmethod
    def get_image(image_id: int | None = None, path: str | None = None) -> dict[str, Any] | None:
        from storage import queries
        from storage.engine import session_scope

        with session_scope(write=False) as session:
            return queries.get_image(session, image_id=image_id, path=path)

    @staticmethod
    def _snapshot(image_id: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The image row and its latest check, read in one short read transaction."""
        from storage import queries
        from storage.engine import session_scope

        with session_scope(write=False) as session:
            image = queries.get_image(session, image_id=image_id)
            return image, (queries.latest_check(session, image_id) if image is not None else None)

    # ------------------------------------------------------------------ checking

    def _analyse(self, path: str, baseline: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
        """Run the checker; any failure becomes an unknown result (a hostile file never stops the worker)."""
        try:
            raw = self.checker.check_health(path, baseline=baseline)
        except SelfHealError as exc:
            status = "critical" if exc.exit_code == 2 else "unknown"
            data = _unknown(path, str(exc), status)
            return data, result_object(data)
        except Exception as exc:  # noqa: BLE001 - the checker is pluggable; its bugs must not stop the cycle
            log.exception("checker failed on %s", path)
            data = _unknown(path, f"checker failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            return data, result_object(data)
        return _result_dict(raw), raw

    def _fresh_or_reused(self, image: dict[str, Any] | None, last: dict[str, Any] | None,
                         path: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """The check result for ``path``, its result object, and file facts (size, mtime_ns, sha256, reused).

        ``last`` is the image's latest check: its analysis is reused when size and sha256 are unchanged."""
        start = time.perf_counter()
        facts: dict[str, Any] = {"file_size": None, "file_mtime_ns": None, "file_sha256": None, "reused": False}
        try:
            # lstat: a registered image is judged as the directory entry it is, never through a link.
            st = os.lstat(path) if image is not None else os.stat(path)
        except FileNotFoundError:
            status = "critical" if image is not None else "unknown"
            data = _unknown(path, f"{path}: {'registered image is missing' if image else 'no such file'}", status)
            return data, result_object(data), facts
        except OSError as exc:
            data = _unknown(path, f"{path}: cannot stat ({describe_oserror(exc)})")
            return data, result_object(data), facts
        if not stat.S_ISREG(st.st_mode):
            if image is not None:
                data = _replaced(path, st.st_mode)
            else:
                data = _unknown(path, f"{path}: is {kind_of(st.st_mode)}, not an image")
            return data, result_object(data), facts
        facts.update(file_size=st.st_size, file_mtime_ns=st.st_mtime_ns)
        try:
            facts["file_sha256"] = sha256_file(path, follow_symlinks=image is None)
        except SelfHealError as exc:
            data = _unknown(path, str(exc))
            return data, result_object(data), facts

        if image is not None:
            if (last is not None and last["status"] != "unknown" and last["file_sha256"] == facts["file_sha256"]
                    and last["file_size"] == facts["file_size"] and not _judged_before_update(last, image)):
                data = {
                    "image_path": path, "status": last["status"], "confidence": last["confidence"],
                    "metrics": dict(last["metrics"] or {}), "findings": list(last["findings"] or []),
                    "recommendation": last["recommendation"] or "", "timestamp": iso_now(),
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                }
                facts["reused"] = True
                return data, result_object(data), facts
        data, raw = self._analyse(path, self._baseline(image) if image is not None else None)
        data["image_path"] = path
        data["duration_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return data, raw, facts

    @staticmethod
    def _mark_unexpected_change(data: dict[str, Any], image: dict[str, Any], sha: str | None) -> bool:
        """Add the security finding for a changed-but-valid file; True when the file is such a change."""
        golden = image.get("golden_sha256")
        if not golden or sha is None or sha == golden:
            return False
        findings = data.setdefault("findings", [])
        if any(f.get("category") == "corruption" for f in findings):
            return False
        if data.get("status") not in ("healthy", "warning") or data.get("metrics", {}).get("hash_verified") is not True:
            return False
        if not any(f.get("category") == "security" for f in findings):  # the checker may have named it already
            findings.append(finding(
                "security", "high",
                f"content changed since registration (sha256 {sha[:12]}…, golden {golden[:12]}…) but verifies: "
                "unexpected change, possible tampering; accept it with `selfheal register` or revert with `selfheal heal`",
                source=SOURCE))
        data["status"] = "warning"
        data["recommendation"] = "review the change: re-register the image to accept it, or heal it to revert"
        return True

    def check(self, image_id: int, *, allow_heal: bool = True) -> CheckRecord:
        """Check one registered image, record it and heal when the policy says so."""
        with self._lock_for(image_id):
            return self._check_locked(image_id, allow_heal=allow_heal)

    def _check_locked(self, image_id: int, *, allow_heal: bool) -> CheckRecord:
        from storage import queries
        from storage.engine import session_scope

        image, last = self._snapshot(image_id)
        if image is None:
            raise LookupError(f"image {image_id} is not registered")
        path = image["path"]
        data, raw, facts = self._fresh_or_reused(image, last, path)
        unexpected = self._mark_unexpected_change(data, image, facts["file_sha256"])
        if unexpected:
            raw = result_object(data)  # custom actions must see the adjusted status
        alerts: list[int] = []
        with session_scope() as session:
            row = queries.record_check(session, data, image_id=image["id"], file_size=facts["file_size"],
                                       file_sha256=facts["file_sha256"], file_mtime_ns=facts["file_mtime_ns"],
                                       reused_analysis=facts["reused"], actor=self.actor)
            previous = image.get("last_status")
            replaced = _nonregular_findings(data)
            if replaced and replaced != _nonregular_findings(last):
                alerts.append(self._alert(session, "image.security", "critical", path,
                                          f"{Path(path).name}: {_first_description(data)}", "check"))
            elif data["status"] == "critical" and previous != "critical":
                alerts.append(self._alert(session, "image.critical", "critical", path,
                                          f"{Path(path).name} is critical: {_first_description(data)}", "check"))
            elif unexpected and not any(f.get("category") == "security" for f in (last or {}).get("findings") or []):
                alerts.append(self._alert(session, "image.unexpected_change", "warning", path,
                                          f"{Path(path).name} changed but verifies: possible tampering", "check"))
            elif data["status"] == "unknown" and (previous != "unknown" or image.get("last_check_id") is None):
                # A registered image the worker cannot judge (unreadable, replaced by a directory …).
                alerts.append(self._alert(session, "image.unknown", "warning", path,
                                          f"{Path(path).name} cannot be checked: {_first_description(data)}", "check"))
        self._deliver(alerts)
        record = CheckRecord(path, image["id"], data, int(row["id"]), facts["file_sha256"], facts["reused"], unexpected)
        if allow_heal:
            record.heal = self._maybe_auto_heal(image, record, raw)
        return record

    def check_path(self, path: str) -> CheckRecord:
        """Check a file by path: a registered image as usual, any other file ad hoc (recorded, never healed)."""
        text = normalise_path(path)
        image = self.get_image(path=text)
        if image is not None:
            return self.check(image["id"])
        from storage import queries
        from storage.engine import session_scope

        data, _raw, facts = self._fresh_or_reused(None, None, text)
        with session_scope() as session:
            row = queries.record_check(session, data, file_size=facts["file_size"], file_sha256=facts["file_sha256"],
                                       file_mtime_ns=facts["file_mtime_ns"], actor=self.actor)
        return CheckRecord(text, None, data, int(row["id"]), facts["file_sha256"], False, False)

    def check_all(self) -> list[CheckRecord]:
        """Check every registered image once, in path order (what `worker --once` does)."""
        from storage import queries
        from storage.engine import session_scope

        with session_scope(write=False) as session:
            ids = [row["id"] for row in queries.list_images_with_latest_status(session)]
        records = []
        for image_id in ids:
            try:
                records.append(self.check(image_id))
            except LookupError:
                continue  # unregistered while the cycle ran
        return records

    def prune_quarantine(self, *, older_than_days: float | None = None, dry_run: bool = False,
                         actor: str = "worker", now: float | None = None) -> Any:
        """Delete quarantine copies older than ``older_than_days`` (default healing.quarantine_retention_days;
        0 there means keep forever and nothing is deleted). What was deleted is one audit event."""
        from healing.images.quarantine import PruneReport, prune_quarantine
        from storage.audit import append_event
        from storage.engine import session_scope

        days = self.settings.healing.quarantine_retention_days if older_than_days is None else older_than_days
        if older_than_days is None and days <= 0:
            return PruneReport()
        report = prune_quarantine(self.settings.quarantine_dir, older_than_s=days * 86400.0, now=now, dry_run=dry_run)
        for error in report.errors:
            log.warning("quarantine prune: cannot remove %s", error)
        if report.removed and not dry_run:
            with session_scope() as session:
                append_event(session, KIND_QUARANTINE_PRUNED, str(self.settings.quarantine_dir), {
                    "older_than_days": days, "removed": len(report.removed), "removed_bytes": report.removed_bytes,
                    "files": [Path(f).name for f in report.removed[:100]], "kept": report.kept}, actor=actor)
            log.info("quarantine: removed %d copies (%d bytes) older than %g days", len(report.removed),
                     report.removed_bytes, days)
        return report

    # ------------------------------------------------------------------ healing

    def _auto_heal_applies(self, image: dict[str, Any]) -> bool:
        if self.auto_heal is not None:
            return self.auto_heal
        return bool(self.settings.health_check.auto_heal or image.get("auto_heal_enabled"))

    def _maybe_auto_heal(self, image: dict[str, Any], record: CheckRecord, raw: Any) -> HealReport | None:
        from storage.audit import append_event
        from storage.engine import session_scope

        wants = record.status == "critical" or (record.unexpected_change and self.settings.healing.revert_unexpected_changes)
        if not wants or not self._auto_heal_applies(image):
            return None
        if image.get("marked_bad"):
            with session_scope() as session:
                append_event(session, KIND_HEAL_DECISION, image["path"], {
                    "image_id": image["id"], "check_id": record.check_id, "decision": "skipped",
                    "reason": "image is marked bad after repeated heal failures; waiting for an operator",
                }, self.actor)
            return None
        return self._heal_locked(image, record, raw, trigger="auto")

    def heal(self, path: str, *, actor: str | None = None) -> HealReport:
        """Explicit heal (`selfheal heal`, a dashboard request): reverts any change to the golden copy."""
        text = normalise_path(path)
        image = self.get_image(path=text)
        if image is None:
            return HealReport(text, False, "none", "not registered: no golden copy to restore from")
        lock = self._lock_for(image["id"])
        if not lock.acquire(timeout=self.settings.health_check.timeout_s):
            return HealReport(text, False, "none", "a check of this image is still running (over health_check.timeout_s)")
        try:
            record = self._check_locked(image["id"], allow_heal=False)
            image = self.get_image(image_id=image["id"]) or image
            if record.status in ("healthy", "warning") and record.file_sha256 == image.get("golden_sha256"):
                return HealReport(text, True, "none", f"{Path(text).name} is {record.status} and equals its golden copy; nothing to do")
            return self._heal_locked(image, record, result_object(record.result), trigger="explicit",
                                     actor=actor or self.actor)
        finally:
            lock.release()

    def _heal_locked(self, image: dict[str, Any], record: CheckRecord, raw: Any, *, trigger: str,
                     actor: str | None = None) -> HealReport:
        from storage import queries
        from storage.audit import append_event
        from storage.engine import session_scope

        actor = actor or self.actor
        path = image["path"]
        heal_ids: list[int] = []
        with session_scope() as session:
            append_event(session, KIND_HEAL_DECISION, path, {
                "image_id": image["id"], "check_id": record.check_id, "decision": "heal", "trigger": trigger,
                "status": record.status, "unexpected_change": record.unexpected_change,
            }, actor)

        report: HealReport | None = None
        for action in self.actions:
            name = f"custom:{action_name(action)}"
            start = time.perf_counter()
            try:
                claimed, error = run_action(action, raw), None
            except Exception as exc:  # noqa: BLE001 - user code: record the failure and go on
                claimed, error = False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            after = self._check_locked(image["id"], allow_heal=False) if claimed else None
            healthy = after is not None and after.status in ("healthy", "warning")
            outcome = "healed" if healthy else ("failed" if claimed or error else "declined")
            detail = {"trigger": trigger, "error": error, "status_after": after.status if after else None}
            with session_scope() as session:
                heal_ids.append(int(queries.record_heal(
                    session, image_path=path, action=name[:255], outcome=outcome, image_id=image["id"],
                    check_id=record.check_id, detail={"action": name, **detail},
                    duration_ms=round((time.perf_counter() - start) * 1000, 3), actor=actor)["id"]))
            if healthy:
                report = HealReport(path, True, name, f"healed by {name}")
                break

        if report is None:
            report = self._repair_parity(image, record, trigger, actor, heal_ids)
        if report is None:
            report = self._restore(image, record, trigger, actor, heal_ids)
        report.heal_ids = heal_ids
        self._account(image, report, actor)
        return report

    def _repair_parity(self, image: dict[str, Any], record: CheckRecord, trigger: str, actor: str,
                       heal_ids: list[int]) -> HealReport | None:
        """Rebuild the file from its erasure-coded parity (issue 14); None when the image has no parity or
        the parity cannot repair it (a failed heal row says why), so the golden restore runs next."""
        from healing.images.healer import HealOutcome, repair_from_parity
        from healing.images.parity import diagnose, load, parity_path, record_verified
        from healing.safeio import read_regular
        from storage import queries
        from storage.engine import session_scope

        path, sha = image["path"], image.get("golden_sha256")
        parity_file = parity_path(self.settings.golden_dir, sha) if sha else None
        if parity_file is None or not os.path.lexists(parity_file):
            return None
        heal_cfg = self.settings.healing
        qdir = self.settings.quarantine_dir if (heal_cfg.backup_before_heal or heal_cfg.quarantine_corrupted) else None
        start = time.perf_counter()
        started: list[int] = []

        def record_started(outcome: HealOutcome) -> None:
            # As for a golden restore: "golden_sha256" is the content the file must end as, which is what
            # reconcile_heals compares with the file on disk after a crash.
            with session_scope() as session:
                started.append(int(queries.record_heal(
                    session, image_path=path, action="repair_parity", outcome=queries.HEAL_STARTED,
                    image_id=image["id"], check_id=record.check_id, source_path=str(parity_file),
                    quarantine_path=outcome.quarantine_path,
                    detail={"trigger": trigger, "golden_sha256": sha, "before_sha256": outcome.before_sha256,
                            "owner": _owner(), **outcome.details}, actor=actor)["id"]))

        outcome = repair_from_parity(path, parity_file, quarantine_dir=qdir, started=record_started)
        detail = {"message": outcome.message, "trigger": trigger, "method": "parity",
                  "before_sha256": outcome.before_sha256, "after_sha256": outcome.after_sha256, **outcome.details}
        duration_ms = round((time.perf_counter() - start) * 1000, 3)
        with session_scope() as session:
            if started:
                row = queries.finish_heal(session, started[0], outcome="healed" if outcome.healed else "failed",
                                          detail=detail, duration_ms=duration_ms, actor=actor)
            else:  # refused before the file was touched: the golden restore comes next
                row = queries.record_heal(
                    session, image_path=path, action="repair_parity", outcome="failed", image_id=image["id"],
                    check_id=record.check_id, source_path=str(parity_file), quarantine_path=outcome.quarantine_path,
                    detail=detail, duration_ms=duration_ms, actor=actor)
            heal_ids.append(int(row["id"]))
        if not outcome.healed:
            return None
        with contextlib.suppress(SelfHealError):  # when it was last verified is a courtesy, never a failure
            record_verified(parity_file, diagnose(read_regular(path, follow_symlinks=False), load(parity_file)))
        after = self._check_locked(image["id"], allow_heal=False)
        if after.status not in ("healthy", "warning"):
            return None  # rebuilt byte-exact yet the re-check objects: let the golden restore try
        return HealReport(path, True, "repair_parity", outcome.message, quarantine_path=outcome.quarantine_path)

    def _restore(self, image: dict[str, Any], record: CheckRecord, trigger: str, actor: str, heal_ids: list[int]) -> HealReport:
        from healing.images.healer import HealOutcome, restore_from_golden
        from storage import queries
        from storage.engine import session_scope

        path = image["path"]
        ref = golden_ref(image, self.store)
        start = time.perf_counter()
        if ref is None:
            message = "no golden copy to restore from"
            with session_scope() as session:
                heal_ids.append(int(queries.record_heal(
                    session, image_path=path, action="restore_golden", outcome="failed", image_id=image["id"],
                    check_id=record.check_id, detail={"message": message, "trigger": trigger}, actor=actor)["id"]))
            return HealReport(path, False, "restore_golden", message)
        heal_cfg = self.settings.healing
        qdir = self.settings.quarantine_dir if (heal_cfg.backup_before_heal or heal_cfg.quarantine_corrupted) else None
        started: list[int] = []

        def record_started(outcome: HealOutcome) -> None:
            # Committed before the file is touched: a kill from here on leaves a "started" row (with its
            # quarantine copy) that reconcile_heals finishes at the next start.
            with session_scope() as session:
                started.append(int(queries.record_heal(
                    session, image_path=path, action="restore_golden", outcome=queries.HEAL_STARTED,
                    image_id=image["id"], check_id=record.check_id, source_path=str(ref.path),
                    quarantine_path=outcome.quarantine_path,
                    detail={"trigger": trigger, "golden_sha256": ref.sha256, "before_sha256": outcome.before_sha256,
                            "owner": _owner(), **outcome.details}, actor=actor)["id"]))

        outcome = restore_from_golden(path, ref, self.store, quarantine_dir=qdir, started=record_started)
        outcome_ok, message, qpath = outcome.healed, outcome.message, outcome.quarantine_path
        detail = {"message": message, "trigger": trigger, "before_sha256": outcome.before_sha256,
                  "after_sha256": outcome.after_sha256, **outcome.details}
        duration_ms = round((time.perf_counter() - start) * 1000, 3)
        with session_scope() as session:
            if started:
                row = queries.finish_heal(session, started[0], outcome="healed" if outcome_ok else "failed", detail=detail,
                                          duration_ms=duration_ms, actor=actor)
            else:  # failed before the file was touched (quarantine or the started record failed)
                row = queries.record_heal(
                    session, image_path=path, action="restore_golden", outcome="failed", image_id=image["id"],
                    check_id=record.check_id, source_path=str(ref.path), quarantine_path=qpath, detail=detail,
                    duration_ms=duration_ms, actor=actor)
            heal_ids.append(int(row["id"]))
        if outcome_ok:
            # Record the healed state, so the image's last status says what is on disk now.
            after = self._check_locked(image["id"], allow_heal=False)
            outcome_ok = after.status in ("healthy", "warning")
            if not outcome_ok:
                message = f"restored, but the re-check says {after.status}"
        return HealReport(path, outcome_ok, "restore_golden", message, quarantine_path=qpath)

    # ------------------------------------------------------------------ crash recovery

    def reconcile_heals(self) -> list[int]:
        """Finish the heals a killed process left "started", then remove stale temporary files.

        A heal whose process is gone is finished as ``restored`` when the file on disk is the golden copy
        (the restore completed; counters are reset and the heal is alerted like any other), otherwise as
        ``interrupted`` (the old file is still there: atomic replace). Returns the ids of the images to
        re-check now. A heal in progress (this process holds its image lock, or its process is alive)
        is left alone."""
        from storage import queries
        from storage.engine import session_scope

        with session_scope(write=False) as session:
            rows = queries.unfinished_heals(session)
        recheck: list[int] = []
        for row in rows:
            if not _owner_gone(row):
                continue
            lock = self._lock_for(row["image_id"]) if row["image_id"] is not None else threading.Lock()
            if not lock.acquire(blocking=False):
                continue  # this process is healing that image right now
            try:
                if self._finish_unfinished(row):
                    recheck.append(int(row["image_id"]))
            finally:
                lock.release()
        self.remove_stale_temps()
        return sorted(set(recheck))

    def _finish_unfinished(self, row: dict[str, Any]) -> bool:
        """Finish one abandoned started heal; True when its image should be re-checked."""
        from storage import queries
        from storage.engine import session_scope

        image = self.get_image(image_id=row["image_id"]) if row["image_id"] is not None else None
        golden = (row.get("detail") or {}).get("golden_sha256")
        on_disk = None
        if image is not None:
            try:
                on_disk = sha256_file(image["path"], follow_symlinks=False)
            except SelfHealError:
                on_disk = None
        restored = golden is not None and on_disk == golden
        if restored:
            outcome, message = "restored", "the restore completed before its process stopped; recorded at restart"
        else:
            outcome, message = "interrupted", "the process stopped during the heal; the file was not replaced"
        with session_scope() as session:
            try:
                queries.finish_heal(session, row["id"], outcome=outcome, actor=self.actor,
                                    detail={"message": message, "after_sha256": on_disk, "reconciled_by": _owner()})
            except LookupError:
                return False  # another process finished it meanwhile
        log.warning("heal %s of %s was left unfinished by a stopped process: %s", row["id"], row["image_path"], outcome)
        if restored and image is not None:
            self._account(image, HealReport(image["path"], True, "restore_golden", message, heal_ids=[row["id"]],
                                            quarantine_path=row.get("quarantine_path")), self.actor)
        return image is not None

    def remove_stale_temps(self) -> list[str]:
        """Delete temporary files of killed restores and copies: next to registered images, in the
        quarantine, the golden store and the baselines. Returns the removed paths."""
        from healing.images.golden import remove_stale_temp_files
        from storage.engine import session_scope
        from storage.worker_queries import image_schedule

        with session_scope(write=False) as session:
            directories = {Path(row["path"]).parent for row in image_schedule(session)}
        directories.add(self.settings.quarantine_dir)
        for root in (self.settings.golden_dir, self.settings.home / "baselines"):
            directories.add(root)
            with contextlib.suppress(OSError):
                directories.update(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        removed: list[str] = []
        for directory in sorted(directories):
            removed.extend(remove_stale_temp_files(directory))
        if removed:
            log.info("removed %d stale temporary file(s) of stopped restores", len(removed))
        return removed

    def record_overrun(self, image_id: int, seconds: float, *, first: bool) -> None:
        """Record an unknown check for an image whose check overran health_check.timeout_s (an alert the
        first time); the check itself may still be running in its thread."""
        from storage import queries
        from storage.engine import session_scope

        image = self.get_image(image_id=image_id)
        if image is None:
            return
        path = image["path"]
        what = (f"check did not finish within health_check.timeout_s ({seconds:g} s)" if first
                else f"the previous check is still running after {seconds:.0f} s")
        data = _unknown(path, f"{path}: {what}", recommendation="look for a hung file system, a huge image or a slow "
                        "custom check; raise health_check.timeout_s if checks of this image are legitimately slow")
        data["findings"][0]["category"] = "performance"
        alerts: list[int] = []
        with session_scope() as session:
            queries.record_check(session, data, image_id=image_id, actor=self.actor)
            if first:
                alerts.append(self._alert(session, "image.check_timeout", "warning", path, f"{Path(path).name}: {what}",
                                          "timeout"))
        self._deliver(alerts)

    def _account(self, image: dict[str, Any], report: HealReport, actor: str) -> None:
        """Reset or count failures; escalate after max_heal_attempts consecutive failures."""
        from storage import queries
        from storage.engine import session_scope

        path = image["path"]
        name = Path(path).name
        alerts: list[int] = []
        with session_scope() as session:
            current = queries.get_image(session, image_id=image["id"]) or image
            if report.healthy:
                queries.set_image_flags(session, image["id"], consecutive_heal_failures=0, marked_bad=False, actor=actor)
                alerts.append(self._alert(session, "image.healed", "info", path, f"{name} healed: {report.message}", report.action))
            else:
                failures = int(current.get("consecutive_heal_failures") or 0) + 1
                limit = self.settings.healing.max_heal_attempts
                escalate = failures >= limit and not current.get("marked_bad")
                queries.set_image_flags(session, image["id"], consecutive_heal_failures=failures,
                                        marked_bad=True if escalate else None, actor=actor)
                alerts.append(self._alert(session, "image.heal_failed", "warning", path,
                                          f"{name} could not be healed ({failures}/{limit}): {report.message}", report.action))
                if escalate:
                    report.escalated = True
                    heal = queries.record_heal(session, image_path=path, action="escalate", outcome="escalated",
                                               image_id=image["id"], detail={"failures": failures, "limit": limit}, actor=actor)
                    report.heal_ids.append(int(heal["id"]))
                    alerts.append(self._alert(
                        session, "image.escalated", "critical", path,
                        f"{name} failed to heal {failures} times; marked bad, auto-heal stopped until an operator "
                        "re-registers or heals it", "max_heal_attempts"))
        self._deliver(alerts)


STALE_HEAL_S = 3600.0  # a started heal older than this is abandoned whatever its pid says (pid reuse, other hosts)


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _owner_gone(row: dict[str, Any]) -> bool:
    """True when the process that started this heal cannot still be running it."""
    from datetime import UTC, datetime

    created = row["created_at"]
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
    if (datetime.now(UTC) - created).total_seconds() > STALE_HEAL_S:
        return True
    owner = (row.get("detail") or {}).get("owner") or {}
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return not owner  # another host's heal may be in progress until it is stale
    if owner["pid"] == os.getpid():
        return True  # ours, and the caller holds the image lock: not in flight
    return not pid_alive(owner["pid"])


def _first_description(data: dict[str, Any]) -> str:
    for f in data.get("findings") or []:
        if f.get("description"):
            return str(f["description"])[:300]
    return str(data.get("recommendation") or "no detail")
