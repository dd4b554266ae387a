"""Audit archive segments: old audit events move out of the database into verified, compressed files
instead of being deleted (issue 15; docs/retention.md).

A segment holds a contiguous run of the chain, seq a..b, as gzip-compressed JSON lines (one event per
line, every column, exactly what was authenticated), named ``<database id>-<a>-<b>.jsonl.gz`` in the
archive directory (``storage.retention.audit_archive_dir``; default ``archive/`` beside the checkpoint
file, i.e. $SELFHEAL_HOME/audit/archive). Its chain checkpoint is one line of the archive manifest
(``<archive dir>/manifest``), authenticated with the audit key like the checkpoint file:

  v1 <db> segment <a> <b> <prev_hash of a> <hash of b> <events> <sha256 of the file> <bytes> <file name> <key id> <UTC> <HMAC>

The chain continues across the boundary: the first event left in the database (seq b+1) links to the
hash of event b, which the manifest line records. Archiving (archive_events) first checks every event
it moves (HMAC, links, no gap), writes and fsyncs the segment, appends its manifest line, then deletes
the events and appends an ``audit.archived`` event (range, count, sha256, file) in the same
transaction — nothing is deleted silently. A crash between the manifest line and the commit leaves
events both archived and live; the next run finishes that archiving (its events must still match).

  archive_events(session, *, before=None, upto_seq=None, paths=None, now=None, actor) -> dict | None
  archive_old_events(settings, *, before, url=None, now=None) -> dict | None
  read_manifest(paths, key) -> (segments, malformed line numbers)
  check_segments(segments, key, paths, *, full, legacy_limit, pins, add) -> SegmentTotals
      verification of the archive, used by storage.audit.verify_chain: every segment's file present
      with the recorded size and sha256 (a byte flip, a deleted line, a swapped or truncated file
      each fail with one line naming the segment); with ``full`` also every event inside re-authenticated
      and linked, and the checkpoint pins inside the archived range compared.
  export_segments(paths, db, destination) -> list[Path]   copy the segments and manifest lines out
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session

from healing.errors import SelfHealError
from healing.safeio import WriteError, describe_oserror, fsync_directory
from storage.audit import (
    GENESIS_HASH,
    AuditKeyError,
    AuditPaths,
    _iso,
    _locked_head,
    _private_dir,
    append_event,
    audit_paths,
    database_id,
    event_hash,
    event_mac,
    key_id,
    load_key,
    read_checkpoints,
)
from storage.engine import is_write_session
from storage.models import AuditEvent

if TYPE_CHECKING:
    from healing.config import Settings

KIND_ARCHIVED = "audit.archived"
MANIFEST_NAME = "manifest"
_DOMAIN = b"selfheal-audit-archive\0"
_HEX = frozenset("0123456789abcdef")
_COLUMNS = ("id", "seq", "created_at", "kind", "subject", "actor", "payload", "prev_hash", "hash")


class AuditArchiveError(SelfHealError):
    """Events cannot be archived (a broken chain, no key, a file that cannot be written): exit 3."""


@dataclass(frozen=True)
class Segment:
    line_no: int
    db: str
    first_seq: int
    last_seq: int
    prev_hash: str
    last_hash: str
    count: int
    sha256: str
    size: int
    name: str
    kid: str
    ts: str
    authentic: bool


@dataclass
class SegmentTotals:
    boundary_seq: int = 0  # the last archived seq (0: nothing archived)
    boundary_hash: str = GENESIS_HASH
    events: int = 0
    authenticated: int = 0
    legacy: int = 0
    segments: int = 0


def archive_dir(paths: AuditPaths) -> Path:
    return paths.archive_dir if paths.archive_dir is not None else paths.checkpoint_file.parent / "archive"


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and set(text) <= _HEX


def _manifest_line(key: bytes, db: str, first: int, last: int, prev_hash: str, last_hash: str, count: int,
                   sha: str, size: int, name: str) -> bytes:
    body = (f"v1 {db} segment {first} {last} {prev_hash} {last_hash} {count} {sha} {size} {name} {key_id(key)} "
            f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    mac = hmac.digest(key, _DOMAIN + body.encode("ascii"), "sha256").hex()
    return f"{body} {mac}\n".encode("ascii")


def _parse(raw: bytes, line_no: int, key: bytes | None) -> Segment | None:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ")
    if len(parts) != 14 or parts[0] != "v1" or parts[2] != "segment":
        return None
    _, db, _, first, last, prev_hash, last_hash, count, sha, size, name, kid, ts, mac = parts
    numbers = (first, last, count, size)
    if (not _is_hex(db, 16) or not all(n.isdigit() and len(n) <= 18 for n in numbers) or not _is_hex(prev_hash, 64)
            or not _is_hex(last_hash, 64) or not _is_hex(sha, 64) or not _is_hex(kid, 16) or not _is_hex(mac, 64)
            or "/" in name or name.startswith(".")):
        return None
    authentic = key is not None and hmac.compare_digest(
        mac, hmac.digest(key, _DOMAIN + text.rsplit(" ", 1)[0].encode("ascii"), "sha256").hex())
    return Segment(line_no, db, int(first), int(last), prev_hash, last_hash, int(count), sha, int(size), name, kid, ts,
                   authentic)


def read_manifest(paths: AuditPaths, key: bytes | None) -> tuple[list[Segment], list[int]]:
    """(segment lines, numbers of lines that are not segment lines); empty when there is no manifest."""
    path = archive_dir(paths) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit archive manifest {path}: {describe_oserror(exc)}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    segments, malformed = [], []
    for number, raw in enumerate(lines, start=1):
        segment = _parse(raw, number, key)
        if segment is None:
            malformed.append(number)
        else:
            segments.append(segment)
    return segments, malformed


def _file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _event_line(row: Any) -> bytes:
    record = {name: getattr(row, name) for name in _COLUMNS}
    record["created_at"] = _iso(row.created_at)
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _authentic(key: bytes | None, event: Any, legacy_ok: bool) -> str | None:
    """"keyed", "legacy" or None (fails authentication)."""
    content = (event.seq, event.created_at, event.kind, event.subject, event.actor, event.payload, event.prev_hash)
    if key is not None and hmac.compare_digest(event.hash, event_mac(key, *content)):
        return "keyed"
    if legacy_ok and hmac.compare_digest(event.hash, event_hash(*content)):
        return "legacy"
    return None


def _legacy_limit(paths: AuditPaths, key: bytes, db: str) -> int:
    """Events up to the database's anchor may be legacy (plain sha256), as verify_chain accepts them."""
    _, checkpoints, _ = read_checkpoints(paths.checkpoint_file, key)
    mine = [cp for cp in checkpoints if cp.db == db and cp.authentic]
    return mine[0].seq if mine and mine[0].kind in ("anchor", "reanchor") else 0


# --------------------------------------------------------------------------- archiving

SEGMENT_MAX_EVENTS = 200_000  # one segment per transaction: the database's write lock is held while it is written


def archive_events(session: Session, *, before: datetime | None = None, upto_seq: int | None = None,
                   paths: AuditPaths | None = None, now: datetime | None = None, actor: str = "retention",
                   max_events: int = SEGMENT_MAX_EVENTS) -> dict[str, Any] | None:
    """Move the oldest live events (created before ``before`` and/or up to ``upto_seq``; at most
    ``max_events``) into one segment.

    Returns {"first_seq", "last_seq", "count", "sha256", "segment", "bytes", "event_seq"} or None when
    nothing is old enough. Must run in a write session; the caller's commit makes it final."""
    if not is_write_session(session):
        raise RuntimeError("archive_events needs a write session")
    paths = paths or audit_paths()
    head = _locked_head(session)  # SQLite: the write transaction; PostgreSQL: FOR UPDATE. Archivers queue here.
    table = AuditEvent.__table__
    live_min = session.execute(sa.select(sa.func.min(table.c.seq))).scalar()
    if live_min is None:
        return None
    key = load_key(paths.key_file)
    if key is None:
        raise AuditArchiveError(f"audit events not archived: the audit key {paths.key_file} does not exist")
    db = database_id(session)
    segments = [s for s in read_manifest(paths, key)[0] if s.db == db and s.authentic]
    boundary = segments[-1].last_seq if segments else 0
    boundary_hash = segments[-1].last_hash if segments else GENESIS_HASH
    folder = archive_dir(paths)
    if live_min <= boundary:
        return _finish_interrupted(session, segments[-1], live_min, paths, actor, now)
    if live_min != boundary + 1:
        raise AuditArchiveError(f"audit events not archived: the chain starts at seq {live_min} but the archive ends at "
                                f"seq {boundary}; run `selfheal audit verify`")
    high = head.seq
    if before is not None:
        first_new = session.execute(sa.select(sa.func.min(table.c.seq)).where(table.c.created_at >= before)).scalar()
        if first_new is not None:
            high = min(high, first_new - 1)
    if upto_seq is not None:
        high = min(high, upto_seq)
    high = min(high, live_min + max(1, max_events) - 1)
    if high < live_min:
        return None

    legacy_limit = _legacy_limit(paths, key, db)
    _private_dir(folder)
    name = f"{db}-{live_min:012d}-{high:012d}.jsonl.gz"
    final = folder / name
    tmp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    query = sa.select(*(table.c[n] for n in _COLUMNS)).where(table.c.seq.between(live_min, high)).order_by(table.c.seq)
    count, expected, prev_hash, last_hash = 0, live_min, boundary_hash, boundary_hash
    try:
        with open(tmp, "xb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            for row in session.execute(query, execution_options={"yield_per": 5000}):
                where = f"event {row.id} (seq {row.seq})"
                if row.seq != expected:
                    raise AuditArchiveError(f"audit events not archived: seq {expected} is missing before {where}; "
                                            "run `selfheal audit verify`")
                if row.prev_hash != prev_hash:
                    raise AuditArchiveError(f"audit events not archived: {where} does not link to the event before it; "
                                            "run `selfheal audit verify`")
                if _authentic(key, row, row.seq <= legacy_limit) is None:
                    raise AuditArchiveError(f"audit events not archived: {where} fails authentication; "
                                            "run `selfheal audit verify`")
                gz.write(_event_line(row))
                count += 1
                expected += 1
                prev_hash = last_hash = row.hash
            if expected != high + 1:
                raise AuditArchiveError(f"audit events not archived: seq {expected}..{high} missing")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_directory(folder)
    except OSError as exc:
        raise WriteError(f"cannot write audit archive segment {final}: {describe_oserror(exc)}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    sha, size = _file_sha256(final)
    _append_manifest(paths, _manifest_line(key, db, live_min, high, boundary_hash, last_hash, count, sha, size, name))
    return _delete_and_record(session, live_min, high, count, sha, size, name, last_hash, actor, now)


def _append_manifest(paths: AuditPaths, line: bytes) -> None:
    path = archive_dir(paths) / MANIFEST_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, line) != len(line):
                raise WriteError(f"cannot write audit archive manifest {path}: short write")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write audit archive manifest {path}: {describe_oserror(exc)}") from None


def _delete_and_record(session: Session, first: int, last: int, count: int, sha: str, size: int, name: str,
                       last_hash: str, actor: str, now: datetime | None, *, resumed: bool = False) -> dict[str, Any]:
    table = AuditEvent.__table__
    session.execute(sa.delete(table).where(table.c.seq.between(first, last)))
    payload = {"first_seq": first, "last_seq": last, "count": count, "sha256": sha, "segment": name, "bytes": size,
               "last_hash": last_hash}
    if resumed:
        payload["resumed"] = True
    event = append_event(session, KIND_ARCHIVED, f"audit:{first}..{last}", payload, actor, now=now)
    return {**payload, "event_seq": event["seq"]}


def _finish_interrupted(session: Session, segment: Segment, live_min: int, paths: AuditPaths, actor: str,
                        now: datetime | None) -> dict[str, Any]:
    """The manifest records a segment whose events are still live (a crash before the commit): check the
    live events are the archived ones, then delete them and record the archiving."""
    table = AuditEvent.__table__
    row = session.execute(sa.select(table.c.hash).where(table.c.seq == segment.last_seq)).first()
    if row is None or row.hash != segment.last_hash or live_min < segment.first_seq:
        raise AuditArchiveError(f"audit events not archived: live events from seq {live_min} overlap archive segment "
                                f"{segment.name} but do not match it; run `selfheal audit verify`")
    return _delete_and_record(session, live_min, segment.last_seq, segment.count, segment.sha256, segment.size,
                              segment.name, segment.last_hash, actor, now, resumed=True)


def archive_old_events(settings: Settings, *, before: datetime, url: str | None = None,
                       now: datetime | None = None) -> dict[str, Any] | None:
    """archive_events until nothing older than ``before`` is left, one segment (and transaction) per
    SEGMENT_MAX_EVENTS events, for run_retention. The archive directory: audit_paths(settings), which
    reads storage.retention.audit_archive_dir. Returns {"first_seq", "last_seq", "count", "segments"}
    or None when nothing was old enough."""
    from storage.engine import session_scope

    paths = audit_paths(settings)
    done: list[dict[str, Any]] = []
    while True:
        with session_scope(url or settings.database_url) as session:
            result = archive_events(session, before=before, paths=paths, now=now, max_events=SEGMENT_MAX_EVENTS)
        if result is None:
            break
        done.append(result)
    if not done:
        return None
    return {"first_seq": done[0]["first_seq"], "last_seq": done[-1]["last_seq"], "count": sum(d["count"] for d in done),
            "segments": [d["segment"] for d in done]}


# --------------------------------------------------------------------------- verifying

def _segment_events(path: Path) -> Iterator[Any]:
    class _Row:
        __slots__ = _COLUMNS

    with gzip.open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                record = json.loads(line)
                row = _Row()
                for name in _COLUMNS:
                    setattr(row, name, record[name])
                row.created_at = _parse_time(record["created_at"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"line {number} is not an audit event") from None
            yield row


def check_segments(segments: list[Segment], key: bytes | None, paths: AuditPaths, *, full: bool, legacy_limit: int,
                   pins: dict[int, list[Any]], add: Callable[..., None]) -> SegmentTotals:
    """Check this database's authentic segments in order (see the module docstring); findings go to ``add``
    as (problem, reason, seq). Returns the boundary the live chain continues from and the counts."""
    totals = SegmentTotals()
    folder = archive_dir(paths)
    expected_first, prev_hash = 1, GENESIS_HASH
    for seg in segments:
        totals.segments += 1
        label = f"archive segment {seg.name} (seq {seg.first_seq}..{seg.last_seq})"
        if seg.first_seq != expected_first or seg.prev_hash != prev_hash:
            add("archive", f"{label} does not continue the chain from seq {expected_first - 1}: "
                           "a segment or its manifest line is missing", seg.first_seq)
        totals.boundary_seq, totals.boundary_hash = seg.last_seq, seg.last_hash
        expected_first, prev_hash = seg.last_seq + 1, seg.last_hash
        totals.events += seg.count
        path = folder / seg.name
        try:
            sha, size = _file_sha256(path)
        except FileNotFoundError:
            add("archive", f"{label}: the file {path} is missing", seg.first_seq)
            continue
        except OSError as exc:
            add("archive", f"{label}: cannot read {path}: {describe_oserror(exc)}", seg.first_seq)
            continue
        if size != seg.size or sha != seg.sha256:
            what = "truncated or extended" if size != seg.size else "its bytes changed"
            add("archive", f"{label}: {what}: sha256 {sha[:12]}…, {size} bytes; the manifest line {seg.line_no} "
                           f"records sha256 {seg.sha256[:12]}…, {seg.size} bytes (edited, truncated or replaced)",
                seg.first_seq)
            continue
        if not full:
            # The sha256 ties the file to its authenticated manifest line; events up to the anchor may be legacy.
            legacy = max(0, min(seg.last_seq, legacy_limit) - seg.first_seq + 1)
            totals.legacy += legacy
            totals.authenticated += seg.count - legacy
            continue
        _check_contents(seg, path, key, label, legacy_limit, pins, add, totals)
    return totals


def _check_contents(seg: Segment, path: Path, key: bytes | None, label: str, legacy_limit: int,
                    pins: dict[int, list[Any]], add: Callable[..., None], totals: SegmentTotals) -> None:
    expected, prev_hash, count = seg.first_seq, seg.prev_hash, 0
    try:
        for row in _segment_events(path):
            count += 1
            kind = _authentic(key, row, row.seq <= legacy_limit)
            if kind is None or row.seq != expected or row.prev_hash != prev_hash:
                add("archive", f"{label}: event {row.id} (seq {row.seq}) inside it fails verification", row.seq)
                return
            totals.authenticated += kind == "keyed"
            totals.legacy += kind == "legacy"
            for cp in pins.get(row.seq, ()):
                if cp.hash != row.hash:
                    add("rewritten", f"{label}: event {row.id} (seq {row.seq}) differs from checkpoint line {cp.line_no}",
                        row.seq)
            expected += 1
            prev_hash = row.hash
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as exc:
        add("archive", f"{label}: cannot be read ({' '.join(str(exc).split()) or type(exc).__name__})", seg.first_seq)
        return
    if count != seg.count or expected != seg.last_seq + 1 or prev_hash != seg.last_hash:
        add("archive", f"{label}: holds {count} events ending at seq {expected - 1}; the manifest records "
                       f"{seg.count} ending at seq {seg.last_seq}", seg.first_seq)


# --------------------------------------------------------------------------- export

def export_segments(paths: AuditPaths, db: str, destination: Path) -> list[Path]:
    """Copy this database's segments and their manifest lines (``manifest``) into ``destination``."""
    key = load_key(paths.key_file)
    segments = [s for s in read_manifest(paths, key)[0] if s.db == db]
    folder = archive_dir(paths)
    written = []
    try:
        destination.mkdir(parents=True, exist_ok=True)
        lines = (folder / MANIFEST_NAME).read_bytes().split(b"\n") if segments else []
    except OSError as exc:
        raise WriteError(f"cannot export the audit archive to {destination}: {describe_oserror(exc)}") from None
    for seg in segments:
        target = destination / seg.name
        try:
            shutil.copyfile(folder / seg.name, target)
        except OSError as exc:
            raise WriteError(f"cannot export {folder / seg.name}: {describe_oserror(exc)}") from None
        written.append(target)
    manifest = destination / MANIFEST_NAME
    try:
        manifest.write_bytes(b"".join(lines[s.line_no - 1] + b"\n" for s in segments))
    except OSError as exc:
        raise WriteError(f"cannot export the audit archive to {destination}: {describe_oserror(exc)}") from None
    written.append(manifest)
    return written
