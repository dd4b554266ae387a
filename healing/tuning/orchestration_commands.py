"""CLI of the tuning orchestration: ``tune run``, ``tune status`` and the ``promotions`` group.

``selfheal tune run [--json]``       one cycle: observe the log sources, expire promotions, process the
                                     open intents (exit 0; 3 on a configuration or database error)
``selfheal tune status [--json]``    mode, runs used, cooldown and backoff left, when the next run may start,
                                     running watches and failures the loop saw while blocked
``selfheal tune watch [--wait] [--json]``   one pass over the post-promotion watches (--wait: poll every
                                     tuning.watch.poll_s until none is running); exit 0, 2 if one rolled back
``selfheal promotions list [--status S] [--json]``
``selfheal promotions approve ID [--actor NAME]``   exit 0 applied, 2 approved but applying failed,
                                                    3 unknown / not pending / expired
``selfheal promotions reject ID [--reason TEXT] [--actor NAME]``
``selfheal promotions rollback ID [--reason TEXT] [--actor NAME] [--json]``   exit 0 rolled back, 2 the file is
                                                    back but the reload failed or the backup cannot be restored,
                                                    3 unknown / not applied

Standard library only at module level: the CLI imports this at start-up.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from healing.errors import EXIT_CRITICAL, EXIT_OK


def register_tune_actions(tune_subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` and ``status`` under the existing ``tune`` group."""
    p = tune_subparsers.add_parser("run", help="process pending tuning intents once (observe, canary, promote/escalate)",
                                   description="One tuning cycle: read the configured log sources, expire old promotions, "
                                               "process the open intents under the mode and rate limits.")
    p.add_argument("--json", action="store_true", help="print the cycle's summary as JSON")
    p.set_defaults(func=cmd_tune_run)
    s = tune_subparsers.add_parser("status", help="mode, rate limits and pending work of config tuning",
                                   description="Show the mode, runs used in the window, cooldown and backoff left, "
                                               "when the next run may start, open intents and pending promotions.")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_tune_status)
    w = tune_subparsers.add_parser("watch", help="check the post-promotion watches now (verify or roll back)",
                                   description="One pass over the running post-promotion watches: health probe, new log "
                                               "lines through the Observer, /metrics; a failure rolls the promotion back.")
    w.add_argument("--wait", action="store_true", help="poll every tuning.watch.poll_s until no watch is running")
    w.add_argument("--json", action="store_true", help="print the results as a JSON array")
    w.set_defaults(func=cmd_tune_watch)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``promotions`` group (list, approve ID, reject ID)."""
    promo = sub.add_parser("promotions", help="review tuning promotions: list, approve, reject",
                           description="Promotions are the winners of tuning runs. In prod they wait for approval.")
    psub = promo.add_subparsers(dest="promotions_command", metavar="ACTION", parser_class=type(promo))
    psub.required = True
    lp = psub.add_parser("list", help="list promotions, newest first")
    lp.add_argument("--status", choices=["pending_review", "approved", "applied", "rejected", "expired", "failed", "rolled_back"])
    lp.add_argument("--limit", type=int, default=50)
    lp.add_argument("--json", action="store_true", help="print a JSON array")
    lp.set_defaults(func=cmd_promotions_list)
    ap = psub.add_parser("approve", help="approve a pending promotion and apply it to the target config")
    ap.add_argument("id", type=int, metavar="ID")
    ap.add_argument("--actor", type=_actor_name, help="who decides, up to 64 printable characters (default: the login name)")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=cmd_promotions_approve)
    rp = psub.add_parser("reject", help="reject a pending promotion (nothing is written)")
    rp.add_argument("id", type=int, metavar="ID")
    rp.add_argument("--reason", help="why (kept in the audit trail)")
    rp.add_argument("--actor", type=_actor_name, help="who decides, up to 64 printable characters (default: the login name)")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_promotions_reject)
    bp = psub.add_parser("rollback", help="roll back an applied promotion: restore the backup, run the reload command",
                         description="Undo an applied promotion: the target file is restored from the backup taken at "
                                     "the apply and tuning.reload_command runs. Exit 0 rolled back, 2 restored but the "
                                     "reload failed (or the backup cannot be restored), 3 unknown or not applied.")
    bp.add_argument("id", type=int, metavar="ID")
    bp.add_argument("--reason", help="why (kept in the audit trail)")
    bp.add_argument("--actor", type=_actor_name, help="who decides, up to 64 printable characters (default: the login name)")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_promotions_rollback)


MAX_ACTOR = 64  # the dashboard's limit on operator names, so both record actors alike


def _actor_name(text: str) -> str:
    """--actor: a name for the audit trail, one line of printable characters (usage error otherwise)."""
    name = text.strip()
    if not name or len(name) > MAX_ACTOR or not name.isprintable():
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_ACTOR} printable characters on one line")
    return name


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _json_out(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=_default, ensure_ascii=False)
    sys.stdout.write("\n")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def _prepare() -> Any:
    from healing.config import load_settings
    from storage.migrate import upgrade

    settings = load_settings()
    upgrade()
    return settings


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


# --------------------------------------------------------------------------- tune run / status

def cmd_tune_run(args: argparse.Namespace) -> int:
    from healing.tuning.runner import process_pending_intents

    summary = process_pending_intents(_prepare())
    if args.json:
        _json_out(summary)
        return EXIT_OK
    observed = summary["observed"]
    print(f"mode {summary['mode']}: {len(observed)} new event(s) in the log sources, "
          f"{len(summary['intents'])} intent(s) processed, {len(summary['expired_promotions'])} promotion(s) expired")
    for o in summary["intents"]:
        print(f"  intent {o['intent_id']}: {o['outcome']} — {o['reason']}")
    for w in summary.get("watches") or []:
        if w["state"] != "watching":
            print(f"  promotion {w['promotion_id']}: {w['state']} — {w['reason']}")
    return EXIT_OK


def tune_status(settings: Any, now: datetime | None = None) -> dict[str, Any]:
    """The data behind ``tune status`` (also usable by the dashboard)."""
    from healing.tuning.runner_config import parse_runner_settings
    from storage import tuning_queries as tq
    from storage.engine import session_scope
    from storage.ratelimit import rate_limit_state

    runner = parse_runner_settings(settings.section("tuning"))
    limits = runner.limits()
    moment = now or datetime.now(UTC)
    with session_scope(write=False) as session:
        counts = tq.tuning_counts(session)
        subsystems = sorted(set(counts["subsystems"]) | {s.subsystem for s in runner.log_sources} | {"vllm"})
        states = [rate_limit_state(session, name, limits, now).as_dict() for name in subsystems]
        watches = [{k: w[k] for k in ("promotion_id", "subsystem", "started_at", "until")}
                   | {"last_probe": (w.get("progress") or {}).get("last_probe")} for w in tq.active_watches(session)]
        blocked = [{k: b[k] for k in ("subsystem", "error_class", "cause", "reason", "first_seen", "last_seen", "until",
                                      "count", "alert_id")}
                   for b in tq.list_blocked(session, since=moment - timedelta(days=1))]
    return {"watches": watches, "blocked": blocked, "mode": settings.mode, "limits": {"max_runs": limits.max_runs, "window_s": limits.window_s,
                                              "cooldown_s": limits.cooldown_s, "backoff_base_s": limits.backoff_base_s},
            "subsystems": states, "open_intents": counts["open_intents"], "processing_intents": counts["processing_intents"],
            "pending_promotions": counts["pending_promotions"], "log_sources": [str(s.path) for s in runner.log_sources]}


def cmd_tune_status(args: argparse.Namespace) -> int:
    status = tune_status(_prepare())
    if args.json:
        _json_out(status)
        return EXIT_OK
    print(f"mode: {status['mode']}   open intents: {status['open_intents']}   pending promotions: {status['pending_promotions']}")
    print(f"{'SUBSYSTEM':<16} {'RUNS':>6} {'COOLDOWN':>9} {'FAILS':>5} {'BACKOFF':>8}  NEXT RUN")
    for s in status["subsystems"]:
        nxt = "now" if s["allowed"] else f"{s['next_allowed_at']:%Y-%m-%d %H:%M} UTC"
        print(f"{s['subsystem']:<16} {s['runs_used']:>3}/{s['max_runs']:<2} {_duration(s['cooldown_left_s']):>9} "
              f"{s['consecutive_failures']:>5} {_duration(s['backoff_left_s']):>8}  {nxt}")
    for w in status["watches"]:
        print(f"watching promotion {w['promotion_id']} ({w['subsystem']}) until {w['until']:%Y-%m-%d %H:%M:%S} UTC"
              + (f", last probe {w['last_probe']}" if w["last_probe"] else ""))
    for b in status["blocked"]:
        until = f" until {b['until']:%Y-%m-%d %H:%M} UTC" if b["until"] else ""
        why = "during the Observer cooldown" if b["cause"] == "cooldown" else "while rate limited"
        print(f"BLOCKED {b['subsystem']}: {b['error_class']} seen {b['count']}x {why}{until}, "
              f"last {b['last_seen']:%Y-%m-%d %H:%M:%S} UTC — {b['reason']}")
    return EXIT_OK


def cmd_tune_watch(args: argparse.Namespace) -> int:
    import time

    from healing.tuning.runner_config import parse_runner_settings
    from healing.tuning.watch import check_watches

    settings = _prepare()
    poll = parse_runner_settings(settings.section("tuning")).watch.poll_s
    results: list[dict[str, Any]] = []
    while True:
        batch = check_watches(settings)
        results += [r for r in batch if r["state"] != "watching"]
        running = [r for r in batch if r["state"] == "watching"]
        if not args.wait or not running:
            results += running
            break
        time.sleep(poll)
    if args.json:
        _json_out(results)
    elif not results:
        print("no promotion is being watched")
    for r in [] if args.json else results:
        print(f"promotion {r['promotion_id']}: {r['state']} — {r['reason']}")
    return EXIT_CRITICAL if any(r["state"] in ("rolled_back", "stopped") for r in results) else EXIT_OK


# --------------------------------------------------------------------------- promotions

def cmd_promotions_list(args: argparse.Namespace) -> int:
    from storage import tuning_queries as tq
    from storage.engine import session_scope

    _prepare()
    if args.limit < 1:
        from healing.errors import UsageError

        raise UsageError("promotions list: --limit must be ≥ 1")
    with session_scope(write=False) as session:
        rows = tq.list_promotions_detail(session, status=args.status, limit=args.limit)
    if args.json:
        _json_out(rows)
        return EXIT_OK
    if not rows:
        print("no promotions")
        return EXIT_OK
    print(f"{'ID':>4}  {'STATUS':<15} {'SUBSYSTEM':<12} {'CHANGE':<48} {'EXPIRES':<17} NOTE")
    for r in rows:
        change = ", ".join(f"{k.split('.', 1)[-1]} {r['old_values'].get(k)}→{v}" for k, v in (r["new_values"] or {}).items())
        expires = f"{r['expires_at']:%Y-%m-%d %H:%M}" if r.get("expires_at") else "-"
        watch = r.get("watch") or {}
        note = ("INCONCLUSIVE" if r["inconclusive"] else
                f"watching until {watch['until']:%H:%M:%S} UTC" if watch.get("state") == "watching" else
                "verified" if watch.get("state") == "verified" and r["status"] == "applied" else (r.get("reason") or ""))
        print(f"{r['id']:>4}  {r['status']:<15} {r['subsystem']:<12} {change:<48} {expires:<17} {note[:80]}")
    return EXIT_OK


def cmd_promotions_approve(args: argparse.Namespace) -> int:
    from healing.tuning.promotions import approve_promotion

    settings = _prepare()
    promo = approve_promotion(None, args.id, _actor(args), settings=settings)
    if args.json:
        _json_out(promo)
    elif promo["status"] == "applied":
        print(f"promotion {promo['id']} applied to {promo['target_file']}" +
              (f" (backup {promo['backup_path']})" if promo.get("backup_path") else ""))
    else:
        print(f"promotion {promo['id']} approved but not applied: {promo['reason']}", file=sys.stderr)
    return EXIT_OK if promo["status"] == "applied" else EXIT_CRITICAL


def cmd_promotions_reject(args: argparse.Namespace) -> int:
    from healing.tuning.promotions import reject_promotion

    _prepare()
    promo = reject_promotion(None, args.id, _actor(args), args.reason)
    if args.json:
        _json_out(promo)
    else:
        print(f"promotion {promo['id']} rejected")
    return EXIT_OK


def cmd_promotions_rollback(args: argparse.Namespace) -> int:
    from healing.tuning.promotions import rollback_promotion

    settings = _prepare()
    promo = rollback_promotion(None, args.id, _actor(args), reason=args.reason, settings=settings)
    problem = promo["rollback"]["reload_problem"]
    if args.json:
        _json_out(promo)
    elif problem:
        print(f"promotion {promo['id']} rolled back: {promo['target_file']} restored, but {problem}", file=sys.stderr)
    else:
        print(f"promotion {promo['id']} rolled back: {promo['target_file']} restored"
              + (f" from {promo['backup_path']}" if promo.get("backup_path") else " (removed: it did not exist before)"))
    return EXIT_CRITICAL if problem else EXIT_OK
