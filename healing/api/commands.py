"""CLI of the REST API: ``selfheal api [--host H] [--port P]`` and ``selfheal api token create|list|revoke``.

``selfheal api`` serves the API in the foreground (uvicorn) until Ctrl-C or SIGTERM.
``selfheal api token create NAME --role viewer|operator`` prints the new token on standard output —
the only time it is ever shown — and what it is on standard error, so ``TOKEN=$(selfheal api token
create ci --role viewer)`` captures just the token. ``list`` shows names, roles and dates (never a
token); ``revoke NAME`` makes the token answer 401 from the next request on.
Exit codes: 0 done, 3 unknown/duplicate name or a database error, 64 usage error.

Standard library only at module level (the CLI imports this at start-up).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import Any

from healing.errors import EXIT_OK, UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the REST API (FastAPI + uvicorn); manage its bearer tokens",
                       description="Serve the REST API in the foreground: the image guide's endpoints (/health, "
                                   "/api/v1/models, /api/v1/analyze, /api/v1/batch, /api/v1/health-check), the operator "
                                   "endpoints under /api/v1/, /metrics (Prometheus), /openapi.json and /docs. Every "
                                   "endpoint but /health and /metrics needs 'Authorization: Bearer TOKEN' "
                                   "(selfheal api token create NAME --role viewer|operator).")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_api)
    asub = p.add_subparsers(dest="api_command", metavar="[token ...]", parser_class=type(p))
    token = asub.add_parser("token", help="create, list or revoke bearer tokens")
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=type(p))
    tsub.required = True
    c = tsub.add_parser("create", help="create a token (printed once on standard output)",
                        description="Create a bearer token. viewer: read everything, analyse uploads; operator: "
                                    "also register images, request checks/heals, decide promotions.")
    c.add_argument("name", metavar="NAME", help="who uses it (1-64 letters, digits, . _ -); the audit actor is api:NAME")
    c.add_argument("--role", required=True, choices=["viewer", "operator"])
    c.add_argument("--json", action="store_true", help="print one JSON object (with the token) instead")
    c.set_defaults(func=cmd_token_create)
    ls = tsub.add_parser("list", help="list tokens (names, roles, dates; never the token)")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(func=cmd_token_list)
    r = tsub.add_parser("revoke", help="revoke a token by name")
    r.add_argument("name", metavar="NAME")
    r.set_defaults(func=cmd_token_revoke)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _prepare() -> None:
    from storage.migrate import upgrade

    upgrade()


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def cmd_api(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if not args.host.strip():
        raise UsageError("--host must not be empty")
    from healing.api.server import serve

    return serve(args.host, args.port)


def cmd_token_create(args: argparse.Namespace) -> int:
    from healing.api.tokens import check_name, create_token
    from storage.engine import session_scope

    check_name(args.name)
    _prepare()
    with session_scope() as session:
        token, row = create_token(session, args.name, args.role, actor=_actor())
    if args.json:
        print(json.dumps({"name": row["name"], "role": row["role"], "token": token}))
    else:
        print(f"token {row['name']!r} (role {row['role']}) created; it is shown only now, keep it safe:", file=sys.stderr)
        print(token)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    from healing.api.tokens import list_tokens
    from storage.engine import session_scope

    _prepare()
    with session_scope(write=False) as session:
        rows = list_tokens(session)
    if args.json:
        print(json.dumps([{k: _iso(v) for k, v in row.items()} for row in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no API tokens (create one: selfheal api token create NAME --role viewer|operator)")
        return EXIT_OK
    print(f"{'NAME':<24} {'ROLE':<9} {'STATE':<8} {'CREATED':<17} LAST USED")
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        used = f"{row['last_used_at']:%Y-%m-%d %H:%M}" if row["last_used_at"] else "never"
        print(f"{row['name']:<24} {row['role']:<9} {state:<8} {row['created_at']:%Y-%m-%d %H:%M} {used}")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from healing.api.tokens import revoke_token
    from storage.engine import session_scope

    _prepare()
    with session_scope() as session:
        row = revoke_token(session, args.name, actor=_actor())
    print(f"token {row['name']!r} revoked")
    return EXIT_OK
