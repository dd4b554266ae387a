"""CLI commands of the image registry: register, heal, monitor (DESIGN.md §4 exit codes)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from healing.errors import (
    EXIT_CRITICAL,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_USAGE,
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
    p = sub.add_parser("register", help="register images: golden copy + baseline, checked by the worker",
                       description="Verify each IMAGE, store a content-addressed golden copy under $SELFHEAL_HOME/golden/ and "
                                   "its baseline under $SELFHEAL_HOME/baselines/. Re-registering a changed image accepts the "
                                   "change. A directory registers the *.png files directly in it (with --recursive: in all its "
                                   "subdirectories); a quoted glob ('imgs/*.rts.png', '**' with --recursive) is expanded here; "
                                   "--from-file reads one path per line ('-': standard input; blank lines and # comments are "
                                   "skipped). With several images: one line per image, a summary, and the worst exit code. "
                                   "Exit 0 registered, 2 damaged (refused), 3 unreadable.")
    p.add_argument("image", metavar="IMAGE", nargs="*", help="image files, directories or quoted globs")
    p.add_argument("--from-file", metavar="FILE", help="read more paths from FILE, one per line ('-' for standard input)")
    p.add_argument("--recursive", action="store_true", help="directories and ** globs include subdirectories")
    p.add_argument("--critical", action="store_true", help="mark the image critical (dashboard priority)")
    p.add_argument("--interval", type=_positive_int, metavar="SECONDS", help="check interval (default health_check.interval)")
    p.add_argument("--accept-current", action="store_true", help="register the file as it is even if its hash does not match")
    p.add_argument("--json", action="store_true", help="print one JSON object (several images: a JSON array)")
    p.add_argument("--node", type=_node_name, metavar="NAME",
                   help="the worker node that checks these images (default worker.node, else this host's name; "
                        "given: images registered before move to NAME)")
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


def _prepare(node: str | None = None) -> Any:
    from healing.config import load_settings
    from storage.migrate import upgrade
    from storage.nodes import use_node

    settings = load_settings()
    upgrade()
    # New images belong to this node (storage.nodes): --node, else worker.node, else the host name.
    use_node(node or settings.section("worker").get("node") or None)
    return settings


def _node_name(text: str) -> str:
    from storage.nodes import check_node_name

    try:
        return check_node_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _move_to_node(paths: list[str], node: str | None) -> None:
    """--node given: images registered before (under another node) move to it too."""
    if node is None or not paths:
        return
    from storage.engine import session_scope
    from storage.nodes import assign_paths

    with session_scope() as session:
        assign_paths(session, paths, node, actor="cli")


_GLOB_CHARS = frozenset("*?[")


def read_path_list(from_file: str) -> list[str]:
    """The paths listed in ``from_file`` ('-': standard input), one per line; blank lines and # comments
    skipped. An unreadable list is one InputError line."""
    try:
        if from_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            lines = Path(from_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{from_file}: cannot read the list of paths ({getattr(exc, 'strerror', None) or exc})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def register_targets(items: list[str], from_file: str | None, *, recursive: bool) -> tuple[list[str], list[str]]:
    """(paths to register, one error line per argument that named nothing) for `register`.

    A directory gives the *.png files directly in it (every level below with ``recursive``), sorted; an
    argument with glob characters that is not itself a file is expanded (``**`` needs ``recursive``);
    anything else is passed through for the registry to judge. Duplicates keep their first place."""
    import glob

    texts = list(items)
    if from_file is not None:
        texts.extend(read_path_list(from_file))
    out: list[str] = []
    errors: list[str] = []
    for text in texts:
        path = Path(text)
        if path.is_dir() and not path.is_symlink():
            pattern = "**/*.png" if recursive else "*.png"
            found = sorted(str(p) for p in path.glob(pattern) if p.is_file() and not p.is_symlink())
            if not found:
                errors.append(f"{text}: no *.png images in this directory{' or below' if recursive else ''}")
            out.extend(found)
        elif _GLOB_CHARS & set(text) and not os.path.lexists(text):
            found = sorted(p for p in glob.glob(text, recursive=recursive) if not os.path.isdir(p))
            if not found:
                errors.append(f"{text}: no file matches this pattern")
            out.extend(found)
        else:
            out.append(text)
    return list(dict.fromkeys(out)), errors


def _register_json(path: str, outcome: dict[str, Any]) -> dict[str, Any]:
    image = outcome["image"]
    return {"path": image["path"], "image_id": image["id"], "golden_sha256": outcome["golden_sha256"],
            "baseline_path": outcome["baseline_path"], "changed": outcome["changed"],
            "hash_verified": outcome["hash_verified"], "accepted_current": outcome["accepted_current"],
            "critical": image["critical"], "interval_s": image["interval_s"]}


def _register_line(outcome: dict[str, Any]) -> str:
    image = outcome["image"]
    what = "change accepted for" if outcome["changed"] else "registered"
    flags = ", critical" if image["critical"] else ""
    note = " (accepted despite integrity problems)" if outcome["accepted_current"] else ""
    return printable(f"{what} {image['path']}: golden {outcome['golden_sha256'][:12]}…, interval {image['interval_s']} s{flags}{note}")


def cmd_register(args: argparse.Namespace) -> int:
    from healing.images.registry import register_image
    from healing.safeio import open_regular

    single = (len(args.image) == 1 and args.from_file is None and not os.path.isdir(args.image[0])
              and not (_GLOB_CHARS & set(args.image[0]) and not os.path.lexists(args.image[0])))
    if not single:
        return _register_many(args)
    with open_regular(args.image[0], what="an image file"):
        pass  # a FIFO, device or socket is refused here at once instead of blocking the registry's reads
    settings = _prepare(args.node)
    outcome = register_image(args.image[0], settings=settings, critical=True if args.critical else None,
                             interval_s=args.interval, accept_current=args.accept_current, actor="cli")
    if outcome["image"].get("node") != args.node:
        _move_to_node([outcome["image"]["path"]], args.node)
    if args.json:
        print(json.dumps(_register_json(args.image[0], outcome), sort_keys=True))
        return EXIT_OK
    print(_register_line(outcome))
    return EXIT_OK


# Worst-first, as for monitor: a damaged image (2) outranks an unreadable one (3).
_REGISTER_RANK = {EXIT_OK: 0, EXIT_UNKNOWN: 1, EXIT_CRITICAL: 2}


def _register_many(args: argparse.Namespace) -> int:
    """`register` with several images: a line (or JSON element) per image, a summary, the worst exit code."""
    from healing.images.registry import register_many
    from healing.safeio import open_regular

    if not args.image and args.from_file is None:
        print("selfheal register: error: give at least one IMAGE or --from-file", file=sys.stderr)
        return EXIT_USAGE
    paths, errors = register_targets(args.image, args.from_file, recursive=args.recursive)
    results: list[dict[str, Any]] = []
    worst, failures = EXIT_OK, 0

    def failed(path: str, message: str, code: int) -> None:
        nonlocal worst, failures
        failures += 1
        print(f"selfheal: {printable(message)}", file=sys.stderr)
        results.append({"path": path, "error": message, "exit_code": code})
        worst = max(worst, code, key=_REGISTER_RANK.__getitem__)

    for error in errors:
        failed(error.split(": ", 1)[0], error, EXIT_UNKNOWN)
    readable = []
    for path in paths:
        if not os.path.islink(path):  # a link: the registry's own line names the file it points to
            try:
                with open_regular(path, what="an image file"):
                    pass  # a FIFO or device is refused here, before a registry thread could block on it
            except InputError as exc:
                failed(path, str(exc), exc.exit_code)
                continue
        readable.append(path)
    registered = 0
    if readable:
        settings = _prepare(args.node)
        moved: list[str] = []
        for path, outcome in register_many(readable, settings=settings, critical=True if args.critical else None,
                                           interval_s=args.interval, accept_current=args.accept_current, actor="cli"):
            if isinstance(outcome, SelfHealError):
                message = str(outcome)
                failed(path, message if message.startswith(path) else f"{path}: {message}", outcome.exit_code)
                continue
            registered += 1
            if outcome["image"].get("node") != args.node:
                moved.append(outcome["image"]["path"])
            if args.json:
                results.append(_register_json(path, outcome))
            else:
                print(_register_line(outcome))
        _move_to_node(moved, args.node)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(f"{registered} of {registered + failures} images registered, {failures} failed (exit {worst})")
    return worst


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
