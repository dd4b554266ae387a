"""Nodes: which worker checks and heals which image when several hosts share one database.

A node is a name (``selfheal worker --node NAME``, default ``worker.node`` or the host name). Each
image belongs to one node, ``images.node``: the node that registered it (``selfheal register --node``
or the registering host's default), re-assignable with ``selfheal nodes assign`` (which touches the
image's updated_at, so its next check is a full one, never a reused analysis). Each node keeps its own
golden store, parity and quarantine under its own ``$SELFHEAL_HOME``; the database is shared.

- A new image row takes this process's node (current_node: what use_node set — the worker's node,
  ``register --node`` — else the host name), in the same INSERT, so no other node can see it unowned.
- On PostgreSQL a node's worker checks, heals and serves requests only for its own images. Images
  with no node (registered before nodes existed: migration 0007 leaves them NULL) are adopted by the
  leader, so nothing stays unchecked.
- On SQLite there is one worker per database (the worker's flock): it checks every image whatever
  its node, as before nodes existed.

"Run now" requests name an image by path or id; a request belongs to that image's node (or to the
leader when it names no registered image, or is a ``tune`` request). claim_request takes the oldest
of this node's pending requests with ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL (BEGIN
IMMEDIATE on SQLite), so two workers never run the same request.

Public API
  MAX_NODE_LENGTH
  check_node_name(text) -> str                   ValueError with one line when unusable
  default_node(configured=None) -> str           configured name, else the host name
  use_node(name), current_node() -> str          the node this process registers images for
  assign_images(session, image_ids, node, *, only_unowned=False, actor, now=None) -> int   audit: image.updated
  assign_paths(session, paths, node, *, only_unowned=False, actor, now=None) -> int
  adopt_unowned(session, node, *, actor, now=None) -> int
  set_heartbeat_node(session, worker_id, node) -> None
  fail_orphaned_requests(session, *, reason, node=None, worker_id=None, now=None) -> int   running requests of workers that are gone
  live_workers(session, node, *, now=None) -> list[dict]   that node's recent heartbeats (one worker per node)
  claim_request(session, worker_id, node, *, leader, now=None) -> dict | None
  list_nodes(session, *, now=None) -> list[dict]  per node: images by status, latest heartbeat, leader
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from storage.audit import KIND_IMAGE_UPDATED, append_event
from storage.models import Image, RunRequest, WorkerHeartbeat

MAX_NODE_LENGTH = 255
# How many of the oldest pending requests one claim looks through for this node's.
CLAIM_WINDOW = 500
STALE_BEATS = 3  # a heartbeat older than this many intervals: that node's worker is not running
# Closing another worker's running requests waits this much longer: a worker whose job threads are all
# busy beats late, and a request closed under a live worker would be finished twice.
ORPHAN_GRACE_S = 60


def check_node_name(text: str) -> str:
    """``text`` as a node name: 1–255 printable characters without spaces."""
    name = str(text).strip()
    if not name:
        raise ValueError("a node name must not be empty")
    if len(name) > MAX_NODE_LENGTH:
        raise ValueError(f"a node name has at most {MAX_NODE_LENGTH} characters, got {len(name)}")
    if not name.isprintable() or any(ch.isspace() for ch in name):
        raise ValueError(f"a node name must be printable and without spaces, got {name!r}")
    return name


def default_node(configured: str | None = None) -> str:
    """The node this process acts as: ``configured`` (``--node``/``worker.node``), else the host name."""
    return check_node_name(configured if configured else socket.gethostname())


_process_node: str | None = None


def use_node(name: str | None) -> None:
    """Make ``name`` the node this process registers images for (None: back to the host name)."""
    global _process_node
    _process_node = check_node_name(name) if name is not None else None


def current_node() -> str:
    """The node images registered by this process belong to: use_node's, else the host name."""
    return _process_node or default_node()


def assign_images(session: Session, image_ids: Sequence[int], node: str, *, only_unowned: bool = False,
                  actor: str = "cli", now: datetime | None = None) -> int:
    """Give the images ``image_ids`` to ``node`` (only those without a node when ``only_unowned``).
    Returns how many changed; one ``image.updated`` audit event names them all."""
    node = check_node_name(node)
    table = Image.__table__
    ids = sorted(set(image_ids))
    changed: list[int] = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        condition = sa.and_(table.c.id.in_(chunk), table.c.node.is_(None) if only_unowned
                            else sa.or_(table.c.node.is_(None), table.c.node != node))
        changed += [row[0] for row in session.execute(sa.select(table.c.id).where(condition))]
        session.execute(sa.update(table).where(condition).values(node=node, updated_at=now or datetime.now(UTC)))
    if changed:
        append_event(session, KIND_IMAGE_UPDATED, f"node:{node}", {"node": node, "image_ids": changed}, actor, now=now)
    return len(changed)


def assign_paths(session: Session, paths: Sequence[str], node: str, *, only_unowned: bool = False,
                 actor: str = "cli", now: datetime | None = None) -> int:
    """assign_images for registered paths (unregistered ones are ignored); returns how many changed."""
    table = Image.__table__
    ids: list[int] = []
    for start in range(0, len(paths), 500):
        ids += [row[0] for row in session.execute(sa.select(table.c.id).where(table.c.path.in_(list(paths[start:start + 500]))))]
    return assign_images(session, ids, node, only_unowned=only_unowned, actor=actor, now=now)


def adopt_unowned(session: Session, node: str, *, actor: str = "worker", now: datetime | None = None) -> int:
    """The leader takes the images without a node (registered before nodes existed); returns how many."""
    table = Image.__table__
    ids = [row[0] for row in session.execute(sa.select(table.c.id).where(table.c.node.is_(None)))]
    return assign_images(session, ids, node, only_unowned=True, actor=actor, now=now) if ids else 0


def _owners(session: Session, targets: set[str]) -> dict[str, str | None]:
    """target (path or id text) → the node of the image it names; targets naming no image are absent."""
    table = Image.__table__
    paths = sorted(targets)
    ids = sorted({int(t) for t in targets if t.isdigit() and len(t) < 18})
    owners: dict[str, str | None] = {}
    for start in range(0, len(paths), 500):
        for path, node in session.execute(sa.select(table.c.path, table.c.node).where(table.c.path.in_(paths[start:start + 500]))):
            owners[path] = node
    if ids:
        for image_id, node in session.execute(sa.select(table.c.id, table.c.node).where(table.c.id.in_(ids))):
            owners.setdefault(str(image_id), node)
    return owners


def claim_request(session: Session, worker_id: str, node: str, *, leader: bool,
                  now: datetime | None = None) -> dict[str, Any] | None:
    """Take the oldest pending request this node should run (status → running), or None.

    Ours: a request naming one of our images; when ``leader``, also ``tune`` requests, requests naming
    an image without a node, and requests naming no registered image."""
    table = RunRequest.__table__
    pending = session.execute(
        sa.select(table.c.id, table.c.kind, table.c.target).where(table.c.status == "pending")
        .order_by(table.c.created_at, table.c.id).limit(CLAIM_WINDOW)).all()
    if not pending:
        return None
    owners = _owners(session, {target for _id, kind, target in pending if kind != "tune"})

    def ours(kind: str, target: str) -> bool:
        if kind == "tune" or target not in owners or owners[target] is None:
            return leader
        return owners[target] == node

    mine = [request_id for request_id, kind, target in pending if ours(kind, target)]
    if not mine:
        return None
    locked = session.execute(
        sa.select(table.c.id).where(table.c.id.in_(mine), table.c.status == "pending")
        .order_by(table.c.created_at, table.c.id).limit(1).with_for_update(skip_locked=True)).scalar()
    if locked is None:
        return None
    session.execute(sa.update(table).where(table.c.id == locked)
                    .values(status="running", claimed_by=worker_id, started_at=now or datetime.now(UTC)))
    row = session.execute(sa.select(table).where(table.c.id == locked)).mappings().one()
    return dict(row)


def set_heartbeat_node(session: Session, worker_id: str, node: str) -> None:
    """Record which node a worker's heartbeat row belongs to (storage.queries.beat_heartbeat writes the rest)."""
    table = WorkerHeartbeat.__table__
    session.execute(sa.update(table).where(table.c.worker_id == worker_id, sa.or_(table.c.node.is_(None), table.c.node != node))
                    .values(node=node))


def live_workers(session: Session, node: str, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The heartbeats of ``node``'s workers that look alive (starting/running, recent), newest first;
    a heartbeat written before nodes existed counts for the node named like its host."""
    now = now or datetime.now(UTC)
    found = []
    query = (select(WorkerHeartbeat).where(sa.func.coalesce(WorkerHeartbeat.node, WorkerHeartbeat.host) == node,
                                           WorkerHeartbeat.state.in_(["starting", "running"]))
             .order_by(WorkerHeartbeat.last_beat.desc()))
    for beat in session.exec(query):
        data = beat.model_dump()
        data["age_s"] = max(0.0, (now - beat.last_beat).total_seconds())
        interval = float((beat.info or {}).get("heartbeat_interval") or 10.0)
        if data["age_s"] <= STALE_BEATS * interval:
            found.append(data)
    return found


def fail_orphaned_requests(session: Session, *, reason: str, node: str | None = None, worker_id: str | None = None,
                           now: datetime | None = None) -> int:
    """Close as failed the running requests whose worker has no live heartbeat any more (killed, host
    gone): what the leader does for nodes that are not coming back soon, and a starting worker for
    its ``node``'s earlier worker (one worker per node: any other ``worker_id`` of it is gone).
    Returns how many."""
    from storage.queries import finish_request

    now = now or datetime.now(UTC)
    alive = set()
    for beat in session.exec(select(WorkerHeartbeat).where(WorkerHeartbeat.state.in_(["starting", "running"]))):
        if node is not None and (beat.node or beat.host) == node and beat.worker_id != worker_id:
            continue
        interval = float((beat.info or {}).get("heartbeat_interval") or 10.0)
        if (now - beat.last_beat).total_seconds() <= STALE_BEATS * interval + ORPHAN_GRACE_S:
            alive.add(beat.worker_id)
    table = RunRequest.__table__
    running = [request_id for request_id, claimed_by in session.execute(
        sa.select(table.c.id, table.c.claimed_by).where(table.c.status == "running")) if claimed_by not in alive]
    for request_id in running:
        finish_request(session, request_id, ok=False, result={"error": reason}, now=now)
    return len(running)


def list_nodes(session: Session, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every node that owns images or has a heartbeat, by name: ``node``, ``images`` (count),
    ``statuses`` ({status: count}), ``heartbeat`` (its newest worker's beat with ``age_s``, or None),
    ``running`` (that beat is recent and not stopped), ``leader`` (it holds the leader lock; PostgreSQL).
    Images without a node are listed under node None."""
    from storage.leader import current_leader

    now = now or datetime.now(UTC)
    images = Image.__table__
    nodes: dict[str | None, dict[str, Any]] = {}

    def entry(name: str | None) -> dict[str, Any]:
        return nodes.setdefault(name, {"node": name, "images": 0, "statuses": {}, "heartbeat": None,
                                       "running": False, "leader": False})

    for name, status, count in session.execute(
            sa.select(images.c.node, images.c.last_status, sa.func.count()).group_by(images.c.node, images.c.last_status)):
        item = entry(name)
        item["images"] += int(count)
        item["statuses"][status] = int(count)
    for beat in session.exec(select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_beat.desc())):
        name = beat.node or beat.host
        item = entry(name)
        if item["heartbeat"] is not None:
            continue
        data = beat.model_dump()
        data["age_s"] = max(0.0, (now - beat.last_beat).total_seconds())
        interval = float((beat.info or {}).get("heartbeat_interval") or 10.0)
        item["heartbeat"] = data
        item["running"] = beat.state in ("starting", "running") and data["age_s"] <= STALE_BEATS * interval + 5
    if session.connection().dialect.name == "sqlite":  # the one worker leads
        for item in nodes.values():
            item["leader"] = item["running"]
    elif (leader := current_leader(session)) is not None:
        entry(leader)["leader"] = True
    return sorted(nodes.values(), key=lambda n: (n["node"] is None, n["node"] or ""))
