"""CLI commands of the storage layer: `selfheal audit verify|init-key` and `selfheal db upgrade`.

Only the standard library is imported at module level (the CLI must start fast).

  selfheal audit verify [--json]   authenticate every event (HMAC key), check every link and compare the
                                   chain with the checkpoint file. Exit 0 "audit chain intact: N events
                                   (A authenticated, L legacy), checkpoint at seq S"; 2 tampered: the first
                                   line names the first finding (which seq, what kind), one indented line
                                   per further finding; 3 cannot verify (key missing or unreadable,
                                   database unavailable or never migrated)
                                   Incremental by default: resumes after the last seq a verification found
                                   intact (events read: only the new ones); --full re-reads every event,
                                   archive segments included
  selfheal audit init-key          create the audit key for a database written before keys existed and
                                   anchor its legacy events (refused when checkpoints exist without a key)
  selfheal audit archive [--older-than-days D | --upto-seq N]
                                   move old events into a verified archive segment (storage.archive):
                                   "archived events A..B (N) to FILE sha256 …" or "nothing to archive"
  selfheal audit export-archive DIR   copy this database's archive segments and manifest lines to DIR
  selfheal db upgrade              run the migrations, print "database at revision R (URL)"
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from healing.errors import EXIT_OK, DatabaseError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="inspect the hash-chained audit trail",
                       description="Audit trail tools. `verify` recomputes every hash and checks every link.")
    audit_sub = p.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=type(p))
    audit_sub.required = True
    v = audit_sub.add_parser("verify", help="check the chain (exit 0 intact, 2 tampered, 3 cannot verify)",
                             description="Authenticate every audit event with the audit key, check the chain links and "
                                         "compare the chain with the checkpoint file. Exit 0 intact, 2 tampered (edited, "
                                         "deleted, reordered, truncated, wiped, checkpoint file or key replaced), "
                                         "3 cannot verify (key missing or unreadable, database unavailable). Incremental "
                                         "by default: resumes after the last seq found intact and reads only newer "
                                         "events; --full re-reads everything, archive segments included.")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--full", action="store_true",
                   help="re-read every event and every archive segment's contents (default: resume after the last "
                        "verified seq)")
    v.set_defaults(func=cmd_audit_verify)
    a = audit_sub.add_parser("archive", help="move old audit events into a verified archive segment",
                             description="Move the oldest audit events into a gzip JSON-lines segment under the archive "
                                         "directory, recorded in the authenticated archive manifest and by an "
                                         "audit.archived event. Default: events older than "
                                         "storage.retention.audit_archive_after_days.")
    a.add_argument("--older-than-days", type=float, metavar="D", help="archive events created more than D days ago")
    a.add_argument("--upto-seq", type=int, metavar="N", help="archive events up to seq N")
    a.set_defaults(func=cmd_audit_archive)
    e = audit_sub.add_parser("export-archive", help="copy the archive segments and their manifest lines to a folder",
                             description="Copy this database's archive segments and their manifest lines to DIR "
                                         "(verifiable with the audit key).")
    e.add_argument("directory", metavar="DIR")
    e.set_defaults(func=cmd_audit_export_archive)
    k = audit_sub.add_parser("init-key", help="create the audit key and anchor existing (legacy) events",
                             description="Create the audit key (audit.key_file, SELFHEAL_AUDIT_KEY_FILE; default "
                                         "$SELFHEAL_HOME/audit/key) for a database whose events predate it, and anchor "
                                         "them in the checkpoint file. Refused when checkpoints exist but the key does not.")
    k.set_defaults(func=cmd_audit_init_key)

    p = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    db_sub = p.add_subparsers(dest="db_command", metavar="ACTION", parser_class=type(p))
    db_sub.required = True
    u = db_sub.add_parser("upgrade", help="apply schema migrations (idempotent)",
                          description="Bring the database (SELFHEAL_DATABASE_URL or $SELFHEAL_HOME/selfheal.db) to the newest schema.")
    u.set_defaults(func=cmd_db_upgrade)


def _existing_sqlite_path(url: str) -> str | None:
    """The file path of a SQLite URL when that file is missing (verify must not create a database)."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    from pathlib import Path

    path = Path(parsed.database).expanduser()
    return None if path.is_file() else str(path)


def _with_database(work: Callable[[Any], Any], *, write: bool) -> Any:
    """Run ``work(session)`` on the configured database; database failures become one DatabaseError line."""
    import sqlalchemy as sa

    from healing.config import load_settings, mask_url
    from storage.engine import session_scope

    url = load_settings().database_url
    missing = _existing_sqlite_path(url)
    if missing is not None:
        raise DatabaseError(f"cannot open database: {missing} does not exist (run `selfheal db upgrade` first)")
    try:
        with session_scope(url, write=write) as session:
            return work(session)
    except sa.exc.OperationalError as exc:
        reason = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
        if "no such table" in reason:
            raise DatabaseError(f"database {mask_url(url)} has no audit table (run `selfheal db upgrade` first)") from None
        raise DatabaseError(f"cannot read database {mask_url(url)}: {reason}") from None
    except sa.exc.DatabaseError as exc:
        reason = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
        if "does not exist" in reason and "audit_" in reason:  # PostgreSQL: relation "audit_head" does not exist
            raise DatabaseError(f"database {mask_url(url)} has no audit table (run `selfheal db upgrade` first)") from None
        raise DatabaseError(f"cannot read database {mask_url(url)}: {reason}") from None


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from healing.errors import printable
    from storage.audit import verify_chain

    full = bool(getattr(args, "full", False))
    report = _with_database(lambda session: verify_chain(session, incremental=not full), write=False)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        # The verdict is the command's output, broken or not (like a monitoring plugin): the first line
        # names the first finding, further findings follow indented.
        print(printable(report.summary()))
        for finding in report.findings[1:]:
            print(f"  {printable(finding)}")
    return int(report.exit_code)


def cmd_audit_init_key(args: argparse.Namespace) -> int:
    from storage.audit import init_key

    result = _with_database(init_key, write=True)
    if result["created"]:
        print(f"created audit key {result['key_file']} (key id {result['key_id']}); back it up: without it the "
              "audit chain cannot be verified")
    else:
        print(f"audit key {result['key_file']} in place (key id {result['key_id']})")
    if result["anchored_seq"] is None:
        print("this database was already anchored")
    else:
        print(f"anchored the database's first {result['anchored_seq']} events at seq {result['anchored_seq']}; "
              "new events are authenticated")
    return EXIT_OK


def cmd_audit_archive(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from healing.config import load_settings
    from healing.errors import InputError
    from storage.archive import archive_events
    from storage.models import utcnow
    from storage.retention import RetentionSettings

    days = args.older_than_days
    if days is not None and days < 0:
        raise InputError(f"--older-than-days must be ≥ 0, got {days:g}")
    if args.upto_seq is not None and args.upto_seq < 1:
        raise InputError(f"--upto-seq must be ≥ 1, got {args.upto_seq}")
    if days is None and args.upto_seq is None:
        days = RetentionSettings.from_settings(load_settings()).audit_archive_after_days
    before = utcnow() - timedelta(days=days) if days is not None else None
    result = _with_database(lambda session: archive_events(session, before=before, upto_seq=args.upto_seq, actor="cli"),
                            write=True)
    if result is None:
        print("nothing to archive")
    else:
        print(f"archived events {result['first_seq']}..{result['last_seq']} ({result['count']}) to {result['segment']} "
              f"sha256 {result['sha256']}")
    return EXIT_OK


def cmd_audit_export_archive(args: argparse.Namespace) -> int:
    from pathlib import Path

    from storage.archive import export_segments
    from storage.audit import audit_paths, database_id

    written = _with_database(lambda session: export_segments(audit_paths(), database_id(session), Path(args.directory)),
                             write=False)
    print(f"exported {len(written) - 1} archive segment(s) and their manifest to {args.directory}")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from healing.config import load_settings, mask_url
    from storage.migrate import upgrade

    url = load_settings().database_url
    try:
        revision = upgrade(url)
    except sa.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise DatabaseError(f"cannot migrate database {mask_url(url)}: {reason}") from None
    print(f"database at revision {revision} ({mask_url(url)})")
    return EXIT_OK
