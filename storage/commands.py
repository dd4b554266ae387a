"""CLI commands of the storage layer: `selfheal audit verify` and `selfheal db upgrade`.

Only the standard library is imported at module level (the CLI must start fast).

  selfheal audit verify [--json]   exit 0 "audit chain intact: N events"; 2 when an event was edited,
                                   deleted or reordered (the line names the first bad event id);
                                   3 when the database cannot be opened or was never migrated
  selfheal db upgrade              run the migrations, print "database at revision R (URL)"
"""

from __future__ import annotations

import argparse
import json

from healing.errors import EXIT_CRITICAL, EXIT_OK, DatabaseError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="inspect the hash-chained audit trail",
                       description="Audit trail tools. `verify` recomputes every hash and checks every link.")
    audit_sub = p.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=type(p))
    audit_sub.required = True
    v = audit_sub.add_parser("verify", help="check the chain (exit 0 intact, 2 tampered, 3 cannot open)",
                             description="Recompute every audit event's hash and check the chain links. "
                                         "Exit 0 intact, 2 an event was edited/deleted/reordered, 3 database unavailable.")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_audit_verify)

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


def cmd_audit_verify(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from healing.config import load_settings, mask_url
    from storage.audit import verify_chain
    from storage.engine import session_scope

    url = load_settings().database_url
    missing = _existing_sqlite_path(url)
    if missing is not None:
        raise DatabaseError(f"cannot open database: {missing} does not exist (run `selfheal db upgrade` first)")
    try:
        with session_scope(url, write=False) as session:
            report = verify_chain(session)
    except sa.exc.OperationalError as exc:
        reason = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
        if "no such table" in reason:
            raise DatabaseError(f"database {mask_url(url)} has no audit table (run `selfheal db upgrade` first)") from None
        raise DatabaseError(f"cannot read database {mask_url(url)}: {reason}") from None
    except sa.exc.DatabaseError as exc:
        reason = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
        raise DatabaseError(f"cannot read database {mask_url(url)}: {reason}") from None
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        print(report.summary())  # the verdict is the command's output, broken or not (like a monitoring plugin)
    return EXIT_OK if report.ok else EXIT_CRITICAL


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
