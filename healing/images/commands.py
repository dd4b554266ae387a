"""CLI commands of the image registry: register, heal, monitor (DESIGN.md §4 exit codes)."""

from __future__ import annotations

import argparse
import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

from healing.errors import (
    EXIT_CRITICAL,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_WARNING,
    DatabaseError,
    InputError,
    SelfHealError,
    printable,
)
from healing.safeio import WriteError

# Worst-first order for a monitor run's exit code: critical beats unknown beats warning.
_RANK = {"healthy": 0, "healed": 0, "warning": 1, "unknown": 2, "critical": 3}
_EXIT = {"healthy": EXIT_OK, "healed": EXIT_OK, "warning": EXIT_WARNING, "unknown": EXIT_UNKNOWN, "critical": EXIT_CRITICAL}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register", help="register an image: golden copy + baseline, checked by the worker",
                       description="Verify IMAGE, store a content-addressed golden copy under $SELFHEAL_HOME/golden/ and its "
                                   "baseline under $SELFHEAL_HOME/baselines/. Re-registering a changed image accepts the change. "
                                   "Exit 0 registered, 2 damaged (refused), 3 unreadable.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--critical", action="store_true", help="mark the image critical (dashboard priority)")
    p.add_argument("--interval", type=_positive_int, metavar="SECONDS", help="check interval (default health_check.interval)")
    p.add_argument("--accept-current", action="store_true", help="register the file as it is even if its hash does not match")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("heal", help="restore a registered image from its golden copy (exit 0 healthy, 2 could not heal)",
                       description="Check IMAGE; unless it is healthy and equal to its golden copy, quarantine the file, run the "
                                   "configured healing actions and restore the golden copy atomically, then verify. "
                                   "Exit 0 healthy afterwards, 2 could not heal (no golden copy, verification failed).")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_heal)

    p = sub.add_parser("monitor", help="check images in a foreground loop, with progress on the terminal",
                       description="Check each PATH (directories expand to the *.rts.png files in them) every --interval seconds. "
                                   "Registered images are healed when --auto-heal (or config auto_heal) applies. The exit code "
                                   "is the worst status of the last round: 0 healthy, 1 warning, 2 critical, 3 unknown.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--interval", type=_positive_float, default=None, metavar="S", help="seconds between rounds (default health_check.interval)")
    p.add_argument("--auto-heal", action="store_true", help="heal registered images that are critical")
    p.add_argument("--iterations", type=_positive_int, default=None, metavar="N", help="stop after N rounds (default: run until Ctrl-C)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("quarantine", help="list or prune the quarantine (copies of damaged files kept before a heal)",
                       description="The worker prunes copies older than healing.quarantine_retention_days (default 30) every "
                                   "hour; `quarantine prune` does it now, or with another age.")
    qsub = p.add_subparsers(dest="action", metavar="ACTION")
    qsub.required = True
    q = qsub.add_parser("list", help="the quarantined files, oldest first")
    q.add_argument("--json", action="store_true", help="print a JSON array")
    q.set_defaults(func=cmd_quarantine_list)
    q = qsub.add_parser("prune", help="delete quarantined files older than --older-than days (default: the configured retention)")
    q.add_argument("--older-than", type=_days, metavar="DAYS", help="age in days (0 deletes everything)")
    q.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_quarantine_prune)


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of days, got {text!r}") from None
    if not 0 <= value <= 36500:
        raise argparse.ArgumentTypeError(f"must be between 0 and 36500 days, got {text}")
    return value


def _prepare() -> Any:
    from healing.config import load_settings
    from storage.migrate import upgrade

    settings = load_settings()
    upgrade()
    return settings


def cmd_register(args: argparse.Namespace) -> int:
    from healing.images.registry import register_image
    from healing.safeio import open_regular

    with open_regular(args.image, what="an image file"):
        pass  # a FIFO, device or socket is refused here at once instead of blocking the registry's reads
    settings = _prepare()
    outcome = register_image(args.image, settings=settings, critical=True if args.critical else None,
                             interval_s=args.interval, accept_current=args.accept_current, actor="cli")
    image = outcome["image"]
    if args.json:
        print(json.dumps({"path": image["path"], "image_id": image["id"], "golden_sha256": outcome["golden_sha256"],
                          "baseline_path": outcome["baseline_path"], "changed": outcome["changed"],
                          "hash_verified": outcome["hash_verified"], "accepted_current": outcome["accepted_current"],
                          "critical": image["critical"], "interval_s": image["interval_s"]}, sort_keys=True))
        return EXIT_OK
    what = "change accepted for" if outcome["changed"] else "registered"
    flags = ", critical" if image["critical"] else ""
    note = " (accepted despite integrity problems)" if outcome["accepted_current"] else ""
    print(printable(f"{what} {image['path']}: golden {outcome['golden_sha256'][:12]}…, interval {image['interval_s']} s{flags}{note}"))
    return EXIT_OK


def _service(settings: Any, *, auto_heal: bool | None, actor: str) -> Any:
    from healing.images.actions import load_actions
    from healing.images.notify import WebhookNotifier
    from healing.images.service import ImageService

    notifier = WebhookNotifier(settings.healing.notification)
    return ImageService(settings, notifier=notifier, actions=load_actions(settings.healing.actions),
                        auto_heal=auto_heal, actor=actor)


class HealError(SelfHealError):
    """A heal that could not complete for an operational reason (disk full, database locked): exit 2."""

    exit_code = EXIT_CRITICAL


def cmd_heal(args: argparse.Namespace) -> int:
    try:
        settings = _prepare()
        service = _service(settings, auto_heal=None, actor="cli")
        try:
            report = service.heal(args.image)
        finally:
            service.notifier.close(timeout=settings.healing.notification.timeout * 2)
    except (DatabaseError, WriteError) as exc:
        # The heal did not complete: that is "could not heal" (exit 2) whatever stopped it; the file
        # itself is either untouched or fully restored (atomic replace), and a started heal is reconciled.
        raise HealError(f"{args.image}: could not heal: {exc}") from None
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    elif report.healthy:
        print(f"{report.image_path}: healthy ({report.message})")
    else:
        print(f"selfheal: {report.image_path}: could not heal: {report.message}", file=sys.stderr)
    return EXIT_OK if report.healthy else EXIT_CRITICAL


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given; directories replaced by the *.rts.png files directly inside them (sorted)."""
    out: list[str] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(str(p) for p in path.glob("*.rts.png") if p.is_file())
            if not found:
                raise InputError(f"{text}: no *.rts.png images in this directory")
            out.extend(found)
        else:
            out.append(text)
    return list(dict.fromkeys(out))


def _describe(record: Any) -> tuple[str, str]:
    """(outcome word, one-line detail) of a check record for the terminal."""
    status = record.status
    detail = f"confidence {float(record.result.get('confidence') or 0):.2f}"
    if record.reused:
        detail += ", unchanged"
    findings = record.result.get("findings") or []
    if findings and status != "healthy":
        detail += f": {findings[0].get('description', '')[:120]}"
    if record.heal is not None:
        if record.heal.healthy:
            return "healed", f"{detail} → healed ({record.heal.message})"
        detail += f" → heal failed: {record.heal.message}" + (" (escalated)" if record.heal.escalated else "")
    elif record.image_id is None and status == "critical":
        detail += " (not registered: no golden copy)"
    return status, detail


def cmd_monitor(args: argparse.Namespace) -> int:
    settings = _prepare()
    paths = expand_paths(args.paths)
    interval = args.interval if args.interval is not None else float(settings.health_check.interval)
    service = _service(settings, auto_heal=True if args.auto_heal else None, actor="monitor")
    worst = "healthy"
    round_no = 0
    try:
        while args.iterations is None or round_no < args.iterations:
            round_no += 1
            worst = "healthy"
            total = f"/{args.iterations}" if args.iterations else ""
            for path in paths:
                record = service.check_path(path)
                outcome, detail = _describe(record)
                if _RANK[outcome] > _RANK[worst]:
                    worst = outcome
                stamp = time.strftime("%H:%M:%S")
                print(f"[{round_no}{total}] {stamp} {outcome:<8} {record.image_path}  {detail}", flush=True)
            if args.iterations is None or round_no < args.iterations:
                time.sleep(interval)
    finally:
        service.notifier.close(timeout=settings.healing.notification.timeout)
    return _EXIT[worst]


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    from healing.config import load_settings
    from healing.images.golden import TMP_MARK
    from healing.images.quarantine import quarantined_at

    qdir = load_settings().quarantine_dir
    rows = []
    if qdir.is_dir():
        for entry in qdir.iterdir():
            st = entry.lstat()  # a quarantined symlink is listed as the link it is, never followed
            if (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and not entry.name.startswith(TMP_MARK):
                rows.append({"path": str(entry), "bytes": st.st_size,
                             "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(quarantined_at(entry)))})
    rows.sort(key=lambda r: (r["quarantined_at"], r["path"]))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"quarantine is empty ({qdir})")
    else:
        for row in rows:
            print(f"{row['quarantined_at']}  {row['bytes']:>12}  {row['path']}")
    return EXIT_OK


def cmd_quarantine_prune(args: argparse.Namespace) -> int:
    settings = _prepare()
    days = settings.healing.quarantine_retention_days if args.older_than is None else args.older_than
    if args.older_than is None and days <= 0:
        print("healing.quarantine_retention_days is 0 (keep forever): nothing pruned; use --older-than DAYS", file=sys.stderr)
        return EXIT_OK
    report = _service(settings, auto_heal=None, actor="cli").prune_quarantine(older_than_days=days, dry_run=args.dry_run,
                                                                              actor="cli")
    if args.json:
        print(json.dumps({"older_than_days": days, "dry_run": args.dry_run, **report.as_dict()}, sort_keys=True))
    else:
        verb = "would remove" if args.dry_run else "removed"
        for path in report.removed:
            print(f"{verb} {path}")
        print(f"{verb} {len(report.removed)} files ({report.removed_bytes} bytes) older than {days:g} days; "
              f"kept {report.kept} ({report.kept_bytes} bytes)")
    for error in report.errors:
        print(f"selfheal: cannot remove {error}", file=sys.stderr)
    return EXIT_UNKNOWN if report.errors else EXIT_OK
