"""CLI of the fleet's nodes (storage.nodes): `selfheal nodes list` and `selfheal nodes assign`.

`nodes list` shows each node's images by status, its worker's heartbeat and which node leads (runs the
global jobs). `nodes assign NODE IMAGE...` moves registered images to another node's worker, e.g.
after moving their files (and golden copies: each node keeps its own store under its SELFHEAL_HOME).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from healing.errors import EXIT_OK, EXIT_UNKNOWN, EXIT_USAGE, printable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nodes", help="the worker nodes sharing this database: list, assign images",
                       description="Several hosts can share one PostgreSQL database, each running `selfheal worker --node NAME`; "
                                   "every image belongs to one node, whose worker checks and heals it.")
    nsub = p.add_subparsers(dest="action", metavar="ACTION")
    nsub.required = True
    ls = nsub.add_parser("list", help="nodes with their images, heartbeat and the leader")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(func=cmd_nodes_list)
    a = nsub.add_parser("assign", help="move registered images to NODE (its worker checks them from then on)")
    a.add_argument("node", metavar="NODE", type=_node_name)
    a.add_argument("image", metavar="IMAGE", nargs="*", help="registered image paths (or ids)")
    a.add_argument("--from-file", metavar="FILE", help="read more paths from FILE, one per line ('-' for standard input)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=cmd_nodes_assign)


def _node_name(text: str) -> str:
    from storage.nodes import check_node_name

    try:
        return check_node_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _open() -> None:
    from storage.migrate import upgrade

    upgrade()


def cmd_nodes_list(args: argparse.Namespace) -> int:
    from storage.engine import session_scope
    from storage.nodes import list_nodes

    _open()
    with session_scope(write=False) as session:
        nodes = list_nodes(session)
    if args.json:
        print(json.dumps(nodes, sort_keys=True, default=str))
        return EXIT_OK
    if not nodes:
        print("no nodes: no image is registered and no worker has run")
    for node in nodes:
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(node["statuses"].items())) or "none"
        beat = node["heartbeat"]
        worker = (f"worker pid {beat['pid']} on {beat['host']}, {beat['state']}, heartbeat {beat['age_s']:.0f} s ago"
                  if beat else "no worker seen")
        name = node["node"] if node["node"] is not None else "(no node: adopted by the leader)"
        role = ", leader" if node["leader"] else ""
        print(printable(f"{name}: {node['images']} image(s) ({statuses}); {worker}{role}"))
    return EXIT_OK


def cmd_nodes_assign(args: argparse.Namespace) -> int:
    from storage.engine import session_scope
    from storage.models import Image
    from storage.nodes import assign_images

    targets = list(args.image)
    if args.from_file is not None:
        from healing.images.commands import read_path_list

        targets += read_path_list(args.from_file)
    if not targets:
        print("selfheal nodes assign: error: give at least one IMAGE or --from-file", file=sys.stderr)
        return EXIT_USAGE
    _open()
    from healing.images.registry import normalise_path

    table = Image.__table__
    ids: list[int] = []
    missing: list[str] = []
    with session_scope() as session:
        for target in targets:
            if target.isdigit():
                found = session.execute(table.select().with_only_columns(table.c.id).where(table.c.id == int(target))).scalar()
            else:
                found = session.execute(table.select().with_only_columns(table.c.id)
                                        .where(table.c.path == normalise_path(target))).scalar()
            if found is None:
                missing.append(target)
            else:
                ids.append(int(found))
        moved = assign_images(session, ids, args.node, actor="cli") if ids else 0
    for target in missing:
        print(printable(f"selfheal: {target}: not a registered image"), file=sys.stderr)
    result: dict[str, Any] = {"node": args.node, "moved": moved, "already_there": len(set(ids)) - moved, "not_registered": missing}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(printable(f"{moved} image(s) moved to node {args.node}, {result['already_there']} already there, "
                        f"{len(missing)} not registered"))
    return EXIT_UNKNOWN if missing else EXIT_OK
