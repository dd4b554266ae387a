"""The append-only audit trail: a keyed (HMAC-SHA256) hash chain, pinned by checkpoints kept outside
the database, so that someone who can write the database but not the key cannot rewrite, delete,
reorder, truncate or wipe events without `selfheal audit verify` noticing.

Public API
  append_event(session, kind, subject, payload=None, actor="system", *, now=None) -> dict
      Appends one event and returns {"id", "seq", "created_at", "hash"}. Must run in a write
      session (storage.engine.session_scope(), the default): on SQLite the transaction already holds
      the write lock (BEGIN IMMEDIATE), on PostgreSQL the chain head row is locked FOR UPDATE, so
      two writers never read the same tail and never share a prev_hash. The event becomes visible
      (and the chain longer) only when the caller's transaction commits; right after that commit
      its (seq, hash) is appended to the checkpoint file.
  append_events(session, [(kind, subject, payload, actor), ...], *, now=None) -> list[dict]
      The same for several events in one transaction (one head read, one bulk insert): the worker's
      batched check cycle.
  verify_chain(session, *, batch_size=5000, paths=None) -> ChainReport
      Walks the chain; names every problem found (which seq, what kind). Use a fresh read session
      (session_scope(write=False)): the chain head and the checkpoint file are read together.
  init_key(session, *, paths=None) -> dict   create the key for a database holding only legacy events
  audit_paths(settings=None) -> AuditPaths    where the key and the checkpoint file live
  canonical_json(value) -> str           sorted keys, compact separators, UTF-8 — what is hashed
  event_mac(key, seq, created_at, kind, subject, actor, payload_text, prev_hash) -> str  (keyed events)
  event_hash(seq, created_at, kind, subject, actor, payload_text, prev_hash) -> str      (legacy events)
  GENESIS_HASH                           prev_hash of the first event ("0" * 64)
  KIND_* constants                       kinds written by storage itself; other areas use their own
                                         dotted lower-case kinds (e.g. "tuning.intent", "promotion.approved")

What is authenticated: HMAC-SHA256 (hex, 64 characters: the same ``hash`` column as before) with
the audit key over the canonical JSON array
  ["selfheal-audit/2", seq, created_at (ISO 8601 UTC, microseconds, 'Z'), kind, subject, actor, payload_text, prev_hash]
where payload_text is the canonical JSON of the payload after healing.config.mask_secrets. Events
written before the key existed are *legacy* events: plain sha256 over the same array without the
first element (event_hash). They are accepted only as a prefix, up to the seq recorded by the
database's anchor checkpoint; their content is protected from then on by that anchor (its hash
commits to the whole legacy chain), not before.

The key: 32 random bytes, hex, in ``audit.key_file`` (YAML) / SELFHEAL_AUDIT_KEY_FILE, default
$SELFHEAL_HOME/audit/key. Created 0600 (directory 0700), never through a symlink, never printed,
never stored in the database — and only when nothing would have needed an older key: the first
append with no checkpoint file to a chain that is empty or holds only legacy events (an upgraded
database is anchored there and then), or `selfheal audit init-key`. A missing key with checkpoints
present is an error (AuditKeyError, exit 3): a new key would "authenticate" whatever the database
holds. A keyed chain seen without a key gets no events either (AuditKeyError: the process was
pointed at the wrong key).

The checkpoint file (``audit.checkpoint_file`` / SELFHEAL_AUDIT_CHECKPOINT_FILE, default
$SELFHEAL_HOME/audit/checkpoints): one line per checkpoint, each authenticated with the key,
  v1 <database id> <anchor|pin|reanchor> <seq> <hash> <key id> <UTC time> <HMAC>
Database id: sha256 of the SQLite file's resolved path, or of backend://host:port/database (no user or
password), so several databases can share one file. Every committed append pins its (seq, hash) right
after the commit; the next append re-pins the committed head if a process died in between. Appenders
hold an exclusive flock on ``<checkpoint file>.lock`` from their append to the end of their
transaction, and verify_chain reads the chain head and the file under a shared one, so the two it
compares always belong together. Past 1 MiB the file is compacted: a pin is dropped only when it lies
inside a strictly increasing run of authentic pins (its neighbours pin a lower and a higher seq);
anchors, run ends, backward jumps and lines that fail authentication are kept as evidence.

What verify_chain reports (problem codes; the reason names the seq and the event id):
  edited       an event fails authentication (changed, or rehashed with plain sha256 or another key)
  rewritten    an event differs from the hash a checkpoint recorded for its seq
  deleted      a gap in the sequence (seq a..b missing), or the head records more events than exist
  relinked     prev_hash differs from the previous event's hash
  reordered    events whose ids run backwards relative to their chain order
  inserted     events beyond the recorded chain head (written around append_event)
  truncated    the database ends before the last checkpoint, or checkpoints go backwards (the database
               was cut back and appended to again)
  wiped        the database holds no events but checkpoints exist
  checkpoint   the checkpoint file is missing, edited, behind the database, or was lost and re-anchored
  key          the key file does not match the key the checkpoints were written with (replaced)
  key_missing / key_unreadable   the events cannot be authenticated at all (exit 3, not 2)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, select

from healing.config import load_settings, mask_secrets
from healing.errors import EXIT_CRITICAL, EXIT_OK, EXIT_UNKNOWN, ConfigError, SelfHealError
from healing.safeio import WriteError, describe_oserror, fsync_directory, write_atomic
from storage.engine import busy_timeout_ms_from_settings, is_write_session
from storage.models import AuditEvent, AuditHead, utcnow

if TYPE_CHECKING:
    from healing.config import Settings

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64

KIND_CHECK = "check"
KIND_HEAL = "heal"
KIND_ALERT = "alert"
KIND_IMAGE_REGISTERED = "image.registered"
KIND_IMAGE_UPDATED = "image.updated"
KIND_REQUEST_ENQUEUED = "request.enqueued"
KIND_REQUEST_FINISHED = "request.finished"
KIND_RUN_CLAIMED = "tuning.run_claimed"
KIND_RUN_REFUSED = "tuning.run_refused"

_HEAD_ID = 1
_MAC_DOMAIN = "selfheal-audit/2"
_CHECKPOINT_DOMAIN = b"selfheal-audit-checkpoint\0"
_KEY_ID_DOMAIN = b"selfheal-audit-key-id"
_KEY_BYTES = 32
_COMPACT_AT_BYTES = 1 << 20
_CHECKPOINT_KINDS = ("anchor", "pin", "reanchor")
_HEX = frozenset("0123456789abcdef")
# Problems that mean "cannot tell", not "tampered": verify exits 3 for these.
CANNOT_VERIFY = frozenset({"key_missing", "key_unreadable"})


class AuditKeyError(SelfHealError):
    """The audit key is missing where events or checkpoints need it, unreadable or malformed (exit 3)."""


# --------------------------------------------------------------------------- hashing

def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "item"):  # NumPy scalars: their Python value
        return value.item()
    if hasattr(value, "tolist"):  # NumPy arrays
        return value.tolist()
    raise TypeError(f"audit payload value of type {type(value).__name__} is not JSON serialisable")


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, non-ASCII kept as UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _iso(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(seq: int, created_at: datetime, kind: str, subject: str, actor: str, payload_text: str, prev_hash: str) -> str:
    """The plain sha256 (hex) of a legacy event: anyone can recompute it, so it authenticates nothing."""
    material = json.dumps([seq, _iso(created_at), kind, subject, actor, payload_text, prev_hash],
                          separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def event_mac(key: bytes, seq: int, created_at: datetime, kind: str, subject: str, actor: str,
              payload_text: str, prev_hash: str) -> str:
    """HMAC-SHA256 (hex) of one keyed event: only the key's holder can compute it."""
    material = json.dumps([_MAC_DOMAIN, seq, _iso(created_at), kind, subject, actor, payload_text, prev_hash],
                          separators=(",", ":"), ensure_ascii=False)
    return hmac.digest(key, material.encode("utf-8"), "sha256").hex()


def key_id(key: bytes) -> str:
    """A short public name for a key (16 hex): tells a replaced key from a damaged line."""
    return hmac.digest(key, _KEY_ID_DOMAIN, "sha256").hex()[:16]


# --------------------------------------------------------------------------- where the key and checkpoints live

_PATH_ENV = ("SELFHEAL_HOME", "SELFHEAL_AUDIT_KEY_FILE", "SELFHEAL_AUDIT_CHECKPOINT_FILE", "SELFHEAL_DB_BUSY_TIMEOUT_MS")


@dataclass(frozen=True)
class AuditPaths:
    key_file: Path
    checkpoint_file: Path
    lock_timeout_s: float = 5.0
    archive_dir: Path | None = None  # archive segments (storage.archive); None: <checkpoint dir>/archive

    @property
    def verified_file(self) -> Path:
        # Where incremental verification resumes from: one authenticated line per database.
        return self.checkpoint_file.with_name(self.checkpoint_file.name + ".verified")

    @property
    def lock_file(self) -> Path:
        # A separate lock file: the checkpoint file itself is replaced on compaction, a lock on it would not.
        return self.checkpoint_file.with_name(self.checkpoint_file.name + ".lock")


_paths_cache: dict[tuple[str | int | None, ...], AuditPaths] = {}


def audit_paths(settings: Settings | None = None) -> AuditPaths:
    """The key and checkpoint file: env SELFHEAL_AUDIT_KEY_FILE / SELFHEAL_AUDIT_CHECKPOINT_FILE, else
    ``audit.key_file`` / ``audit.checkpoint_file`` in the YAML file (relative to $SELFHEAL_HOME), else
    $SELFHEAL_HOME/audit/key and $SELFHEAL_HOME/audit/checkpoints."""
    if settings is None:
        # Called at every write transaction that appends: re-read the settings only when an input changed.
        config = os.environ.get("SELFHEAL_CONFIG")
        try:
            config_stamp = os.stat(config).st_mtime_ns if config else None
        except OSError:
            config_stamp = None  # load_settings reports the unreadable file itself
        stamp = (config, config_stamp, *(os.environ.get(name) for name in _PATH_ENV))
        cached = _paths_cache.get(stamp)
        if cached is None:
            cached = _paths_cache[stamp] = audit_paths(load_settings())
        return cached
    section = settings.section("audit")
    paths = []
    for env_name, option, default in (("SELFHEAL_AUDIT_KEY_FILE", "key_file", "audit/key"),
                                      ("SELFHEAL_AUDIT_CHECKPOINT_FILE", "checkpoint_file", "audit/checkpoints")):
        raw = os.environ.get(env_name) or section.get(option) or default
        if not isinstance(raw, str):
            raise ConfigError(f"config: audit.{option} must be a path, got {raw!r}")
        path = Path(raw).expanduser()
        paths.append(path if path.is_absolute() else settings.home / path)
    retention = settings.section("storage").get("retention")
    archive = retention.get("audit_archive_dir") if isinstance(retention, dict) else None
    archive_dir = None
    if isinstance(archive, str) and archive:
        archive_dir = Path(archive).expanduser()
        archive_dir = archive_dir if archive_dir.is_absolute() else settings.home / archive_dir
    return AuditPaths(paths[0], paths[1], busy_timeout_ms_from_settings(settings) / 1000.0, archive_dir)


_db_ids: dict[str, str] = {}


def database_id(session: Session) -> str:
    """16 hex naming the database behind ``session`` in checkpoint lines (no credentials in it)."""
    url = session.get_bind().url
    text = url.render_as_string(hide_password=True)
    cached = _db_ids.get(text)
    if cached is None:
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            identity = "sqlite:" + str(Path(url.database).expanduser().resolve())
        else:
            identity = f"{url.get_backend_name()}://{url.host or ''}:{url.port or ''}/{url.database or ''}"
        cached = _db_ids[text] = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return cached


# --------------------------------------------------------------------------- the key

_keys: dict[Path, tuple[tuple[int, ...], bytes]] = {}


def load_key(path: Path) -> bytes | None:
    """The key in ``path``; None when there is no file; AuditKeyError when it cannot be used."""
    from healing.errors import InputError
    from healing.safeio import read_regular

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditKeyError(f"audit key {path}: cannot read ({describe_oserror(exc)})") from None
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _keys.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        # Following a symlink is allowed on read (secret mounts are links); creation never writes through one.
        text = read_regular(path, max_bytes=1024, what="an audit key file").decode("ascii").strip()
    except InputError as exc:
        raise AuditKeyError(f"audit key {exc}") from None
    except UnicodeDecodeError:
        text = ""
    if len(text) != 2 * _KEY_BYTES or not set(text) <= _HEX:
        raise AuditKeyError(f"audit key {path}: not {2 * _KEY_BYTES} lower-case hex characters")
    key = bytes.fromhex(text)
    _keys[path] = (stamp, key)
    return key


def _private_dir(directory: Path) -> None:
    """Create ``directory`` 0700 (parents too); refuse one that is a symlink."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create {directory}: {describe_oserror(exc)}") from None
    if directory.is_symlink():
        raise WriteError(f"{directory}: audit directory is a symbolic link; refusing to write there")


def _create_key(path: Path) -> bytes:
    """Write a new random key to ``path`` (0600) unless one appeared meanwhile; returns the key in force."""
    _private_dir(path.parent)
    if path.is_symlink():  # dangling: link() below would refuse it too, with a less helpful message
        raise WriteError(f"{path}: audit key path is a symbolic link; refusing to write there")
    key = secrets.token_bytes(_KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.hex().encode("ascii") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # link() never follows or replaces an existing name (symlink included): two creators race
            # safely and the loser uses the winner's key.
            os.link(tmp, path)
        except FileExistsError:
            existing = load_key(path)
            if existing is None:
                raise AuditKeyError(f"audit key {path}: appeared and vanished while being created") from None
            return existing
    except OSError as exc:
        raise WriteError(f"cannot create audit key {path}: {describe_oserror(exc)}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    fsync_directory(path.parent)
    return key


# --------------------------------------------------------------------------- the checkpoint file

@dataclass(frozen=True)
class Checkpoint:
    line_no: int
    db: str
    kind: str
    seq: int
    hash: str
    kid: str
    ts: str
    authentic: bool


def _checkpoint_line(key: bytes, db: str, kind: str, seq: int, digest: str) -> bytes:
    body = f"v1 {db} {kind} {seq} {digest} {key_id(key)} {datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    mac = hmac.digest(key, _CHECKPOINT_DOMAIN + body.encode("ascii"), "sha256").hex()
    return f"{body} {mac}\n".encode("ascii")


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and set(text) <= _HEX


def _parse_line(raw: bytes, line_no: int, key: bytes | None) -> Checkpoint | None:
    """One checkpoint line, or None when it is not one (edited, or cut mid-line)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ")
    if len(parts) != 8 or parts[0] != "v1":
        return None
    _, db, kind, seq_text, digest, kid, ts, mac = parts
    if (not _is_hex(db, 16) or kind not in _CHECKPOINT_KINDS or not seq_text.isdigit() or len(seq_text) > 18
            or not _is_hex(digest, 64) or not _is_hex(kid, 16) or len(ts) != 16 or not _is_hex(mac, 64)):
        return None
    authentic = key is not None and hmac.compare_digest(
        mac, hmac.digest(key, _CHECKPOINT_DOMAIN + text.rsplit(" ", 1)[0].encode("ascii"), "sha256").hex())
    return Checkpoint(line_no, db, kind, int(seq_text), digest, kid, ts, authentic)


@contextmanager
def _shared_checkpoint_lock(paths: AuditPaths) -> Iterator[bool]:
    """A shared flock for readers; yields False (unlocked) when there is no lock file (nothing keyed was
    ever appended), it cannot be opened, or the lock is not had within the timeout."""
    try:
        fd = os.open(paths.lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        yield _flock(fd, paths, exclusive=False)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _flock(fd: int, paths: AuditPaths, *, exclusive: bool) -> bool:
    # Polling with LOCK_NB: a blocking flock cannot time out, and a stopped process must not hang us.
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + paths.lock_timeout_s
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, operation)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WriteError(f"cannot lock {paths.lock_file}: {describe_oserror(exc)}") from None
        if time.monotonic() + delay > deadline:
            if exclusive:
                raise WriteError(f"audit checkpoint lock {paths.lock_file} held for more than "
                                 f"{paths.lock_timeout_s:g} s by another process")
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


@dataclass
class _FileState:
    """What an appender needs from the checkpoint file, kept per process and updated incrementally."""

    ino: int = 0
    size: int = 0
    any_lines: bool = False
    ends_with_newline: bool = True
    last_seq: dict[str, int] = field(default_factory=dict)
    tail: bytes = b""  # the last bytes seen: tells an appended-to file from a replaced one


_file_states: dict[Path, _FileState] = {}


def _read_state(path: Path) -> _FileState:
    """The checkpoint file's state; only bytes appended since this process last looked are parsed."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        _file_states.pop(path, None)
        return _FileState()
    except OSError as exc:
        raise WriteError(f"cannot read audit checkpoints {path}: {describe_oserror(exc)}") from None
    state = _file_states.get(path)
    if state is None or state.ino != st.st_ino or state.size > st.st_size:
        state = _FileState(ino=st.st_ino)
    if state.size == st.st_size:
        return state
    try:
        with open(path, "rb") as fh:
            fh.seek(state.size - len(state.tail))
            data = fh.read(st.st_size - state.size + len(state.tail))
            if not data.startswith(state.tail):
                # Another process compacted the file and the new one reused the inode number: start over.
                state = _FileState(ino=st.st_ino)
                fh.seek(0)
                data = fh.read(st.st_size)
            else:
                data = data[len(state.tail):]
    except OSError as exc:
        raise WriteError(f"cannot read audit checkpoints {path}: {describe_oserror(exc)}") from None
    for raw in data.split(b"\n"):
        parts = raw.split(b" ")
        if len(parts) == 8 and parts[3].isdigit():
            state.last_seq[parts[1].decode("ascii", "replace")] = int(parts[3])
        state.any_lines = state.any_lines or bool(raw.strip())
    state.size += len(data)
    state.tail = (state.tail + data)[-64:]
    state.ends_with_newline = data.endswith(b"\n")
    _file_states[path] = state
    return state


def _append_checkpoint(paths: AuditPaths, key: bytes, db: str, kind: str, seq: int, digest: str) -> None:
    """Append one line with a single O_APPEND write (the caller holds the exclusive lock)."""
    path = paths.checkpoint_file
    state = _read_state(path)
    line = _checkpoint_line(key, db, kind, seq, digest)
    if not state.ends_with_newline:
        line = b"\n" + line  # a line cut by a crash stays a (reported) bad line, never merges with ours
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WriteError(f"cannot write audit checkpoints {path}: {describe_oserror(exc)}") from None
    try:
        if os.write(fd, line) != len(line):
            raise WriteError(f"cannot write audit checkpoints {path}: short write")
    except OSError as exc:
        raise WriteError(f"cannot write audit checkpoints {path}: {describe_oserror(exc)}") from None
    finally:
        os.close(fd)
    _read_state(path)
    if _file_states.get(path, _FileState()).size > _COMPACT_AT_BYTES:
        _compact(paths, key)


def _compact(paths: AuditPaths, key: bytes) -> None:
    """Rewrite the file without pins that lie strictly inside an increasing run of authentic pins."""
    path = paths.checkpoint_file
    raw_lines = path.read_bytes().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    by_db: dict[str, list[tuple[int, Checkpoint]]] = {}
    for index, raw in enumerate(raw_lines):
        cp = _parse_line(raw, index + 1, key)
        if cp is not None and cp.authentic:
            by_db.setdefault(cp.db, []).append((index, cp))
    dropped: set[int] = set()
    for entries in by_db.values():
        for (_, before), (index, cp), (_, after) in zip(entries, entries[1:], entries[2:], strict=False):
            if cp.kind == "pin" and before.seq < cp.seq < after.seq:
                dropped.add(index)
    kept = b"".join(raw + b"\n" for i, raw in enumerate(raw_lines) if i not in dropped)
    write_atomic(path, kept, mode=0o600, what="audit checkpoint file")
    _file_states.pop(path, None)
    _read_state(path)


def read_checkpoints(path: Path, key: bytes | None) -> tuple[bool, list[Checkpoint], list[int]]:
    """(file exists, parsed lines, numbers of lines that are not checkpoint lines)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False, [], []
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit checkpoints {path}: {describe_oserror(exc)}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed: list[Checkpoint] = []
    malformed: list[int] = []
    for number, raw in enumerate(lines, start=1):
        cp = _parse_line(raw, number, key)
        if cp is None:
            malformed.append(number)
        else:
            parsed.append(cp)
    return True, parsed, malformed


# --------------------------------------------------------------------------- appending

def _head_query() -> Any:
    # populate_existing: a long-lived session may hold a stale head from an earlier transaction;
    # the row just read under the lock must win over the identity map.
    return select(AuditHead).where(AuditHead.id == _HEAD_ID).with_for_update().execution_options(populate_existing=True)


def _locked_head(session: Session) -> AuditHead:
    head = session.exec(_head_query()).first()
    if head is not None:
        return head
    # Migration 0001 seeds the head; recreate it only if someone deleted it on an empty chain.
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(
        insert(AuditHead).values(id=_HEAD_ID, seq=0, last_event_id=None, last_hash=GENESIS_HASH).on_conflict_do_nothing()
    )
    return session.exec(_head_query()).one()


_TXN = "selfheal.audit.transaction"
_warned_unkeyed: set[str] = set()


@dataclass
class _Transaction:
    """Per write transaction: the key in use and the checkpoint lock held until the transaction ends."""

    key: bytes | None
    paths: AuditPaths
    db: str
    lock_fd: int | None = None
    pending: tuple[int, str] | None = None  # (seq, hash) of the newest event appended in this transaction
    anchored_seq: int | None = None  # set when this transaction wrote the database's first checkpoint

    def release(self) -> None:
        if self.lock_fd is not None:
            _held.pop(self.lock_fd, None)
            os.close(self.lock_fd)
            self.lock_fd = None


# Lock descriptors held by open transactions. A forked child shares their open file description, and
# with it the flock, until it closes its copy: it does so at once, and forgets the transactions.
_held: dict[int, _Transaction] = {}


def _drop_locks_after_fork() -> None:
    for fd, txn in list(_held.items()):
        txn.lock_fd = None
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_drop_locks_after_fork)


def _open_lock(paths: AuditPaths) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(paths.lock_file, flags, 0o600)
        except FileNotFoundError:
            _private_dir(paths.lock_file.parent)  # first use: create the directory 0700
            return os.open(paths.lock_file, flags, 0o600)
    except OSError as exc:
        raise WriteError(f"cannot open audit lock {paths.lock_file}: {describe_oserror(exc)}") from None


def _begin(session: Session, head: AuditHead, paths: AuditPaths, *, create_for_legacy: bool = False) -> _Transaction:
    """Take the checkpoint lock, settle which key this transaction uses and bring the database's
    checkpoints up to its committed head (anchor, re-anchor or re-pin)."""
    db = database_id(session)
    fd = _open_lock(paths)
    txn = _Transaction(key=None, paths=paths, db=db, lock_fd=fd)
    _held[fd] = txn
    try:
        _flock(fd, paths, exclusive=True)
        state = _read_state(paths.checkpoint_file)
        key = load_key(paths.key_file)
        if key is None:
            if state.any_lines:
                raise AuditKeyError(
                    f"audit key missing: {paths.key_file} does not exist but {paths.checkpoint_file} holds checkpoints "
                    "written with a key; restore the key (a new one would not authenticate the existing events)")
            if head.seq and not create_for_legacy:
                # A keyed chain seen without its key is a process pointed at the wrong key: refuse.
                legacy_head = _last_event_matches(session, head, None)
                if legacy_head is False:
                    raise AuditKeyError(
                        f"audit key missing: {paths.key_file} does not exist but the chain's events are keyed; "
                        "point this process at the key the other processes use (SELFHEAL_HOME, audit.key_file)")
                if legacy_head is None:  # the head's event is gone: leave the evidence to verify, bless nothing
                    if db not in _warned_unkeyed:
                        _warned_unkeyed.add(db)
                        log.warning("audit events are not authenticated: no audit key at %s and the chain head's "
                                    "event is missing; run `selfheal audit verify`", paths.key_file)
                    txn.release()
                    return txn
                # A database written before keyed events (no key, no checkpoint, a plain sha256 head):
                # anchor it now, as `selfheal audit init-key` would, so an upgrade is protected from its
                # first append on. What the table held before is covered by the anchor from here on.
            key = _create_key(paths.key_file)
            if not create_for_legacy:  # `selfheal audit init-key` says so itself
                log.warning("created audit key %s (key id %s)%s; back it up: without it the audit chain cannot be "
                            "verified", paths.key_file, key_id(key),
                            f", anchoring {head.seq} legacy events" if head.seq else "")
        txn.key = key
        last = state.last_seq.get(db)
        if last is None:
            kind = "anchor"
            if head.seq and _last_event_matches(session, head, key) is True:
                kind = "reanchor"  # keyed events but no checkpoint for them: the file was lost; say so forever
            _append_checkpoint(paths, key, db, kind, head.seq, head.last_hash)
            txn.anchored_seq = head.seq
        elif last < head.seq:
            _append_checkpoint(paths, key, db, "pin", head.seq, head.last_hash)  # a process died before pinning
    except BaseException:
        txn.release()
        raise
    return txn


def _last_event_matches(session: Session, head: AuditHead, key: bytes | None) -> bool | None:
    """Whether the head's event carries ``key``'s HMAC (key None: a plain legacy sha256); None when it is gone."""
    row = session.exec(select(AuditEvent).where(AuditEvent.seq == head.seq)).first()
    if row is None:
        return None
    content = (row.seq, row.created_at, row.kind, row.subject, row.actor, row.payload, row.prev_hash)
    return hmac.compare_digest(row.hash, event_mac(key, *content) if key is not None else event_hash(*content))


@sa_event.listens_for(OrmSession, "after_commit")
def _pin_after_commit(session: OrmSession) -> None:
    txn: _Transaction | None = session.info.pop(_TXN, None)
    if txn is None:
        return
    try:
        if txn.pending is not None and txn.key is not None:
            _append_checkpoint(txn.paths, txn.key, txn.db, "pin", *txn.pending)
    except SelfHealError as exc:
        # The events are committed; raising would tell the caller they were not. The next append
        # re-pins the head, and until then verify reports the checkpoint file as behind.
        log.error("audit checkpoint not written: %s", exc)
    finally:
        txn.release()


@sa_event.listens_for(OrmSession, "after_transaction_end")
def _release_after_rollback(session: OrmSession, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost transaction ended without commit (after_commit pops first)
        txn: _Transaction | None = session.info.pop(_TXN, None)
        if txn is not None:
            txn.release()


def append_event(
    session: Session,
    kind: str,
    subject: str,
    payload: dict[str, Any] | None = None,
    actor: str = "system",
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Append one audit event under the chain lock; returns its id, seq, created_at and hash."""
    return _append(session, [(kind, subject, payload, actor)], now=now, caller="append_event")[0]


_SAFE_KEYS: dict[tuple[str, ...], bool] = {}


def _masked_flat(payload: dict[str, Any]) -> dict[str, Any]:
    """mask_secrets(payload), skipping the walk for a flat payload whose keys were seen to hold no secret
    word (a batch of check events repeats one set of keys)."""
    if any(isinstance(v, dict | list) for v in payload.values()):
        return mask_secrets(payload)
    keys = tuple(payload)
    safe = _SAFE_KEYS.get(keys)
    if safe is None:
        safe = _SAFE_KEYS[keys] = mask_secrets(dict.fromkeys(keys, 1)) == dict.fromkeys(keys, 1)
    return payload if safe else mask_secrets(payload)


def append_events(session: Session, events: Sequence[tuple[str, str, dict[str, Any] | None, str]], *,
                  now: datetime | None = None) -> list[dict[str, Any]]:
    """Append several events (kind, subject, payload, actor) in order under one chain lock: the same
    chain as that many append_event calls, with one head read, one bulk insert and one head update."""
    if not events:
        return []
    return _append(session, events, now=now, caller="append_events")


def _append(session: Session, events: Sequence[tuple[str, str, dict[str, Any] | None, str]], *,
            now: datetime | None, caller: str) -> list[dict[str, Any]]:
    """append_event(s): check the kinds and the session, take the chain lock, insert, move the head."""
    for kind, *_ in events:
        if not kind or len(kind) > 64:
            raise ValueError(f"audit kind must be 1..64 characters, got {kind!r}")
    if not is_write_session(session):
        raise RuntimeError(f"{caller} needs a write session (storage.engine.session_scope(write=True))")
    head = _locked_head(session)
    txn: _Transaction | None = session.info.get(_TXN)
    if txn is None:
        txn = _begin(session, head, audit_paths())
        session.info[_TXN] = txn
    created_at = now or utcnow()
    created_at = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at.astimezone(UTC)
    rows: list[dict[str, Any]] = []
    seq, prev = head.seq, head.last_hash
    for kind, subject, payload, actor in events:
        seq += 1
        payload_text = canonical_json(_masked_flat(payload or {}))
        if txn.key is not None:
            digest = event_mac(txn.key, seq, created_at, kind, subject, actor, payload_text, prev)
        else:
            digest = event_hash(seq, created_at, kind, subject, actor, payload_text, prev)
        rows.append({"seq": seq, "created_at": created_at, "kind": kind, "subject": subject, "actor": actor,
                     "payload": payload_text, "prev_hash": prev, "hash": digest})
        prev = digest
    table = AuditEvent.__table__
    # RETURNING in any order (asking for parameter order makes SQLite insert row by row): seq names the row.
    by_seq = {r[0]: r[1] for r in session.connection().execute(sa.insert(table).returning(table.c.seq, table.c.id), rows)}
    ids = [by_seq[r["seq"]] for r in rows]
    head.seq = seq
    head.last_event_id = ids[-1]
    head.last_hash = prev
    session.add(head)
    session.flush()
    txn.pending = (seq, prev)
    return [{"id": i, "seq": r["seq"], "created_at": created_at, "hash": r["hash"]} for i, r in zip(ids, rows, strict=True)]


def init_key(session: Session, *, paths: AuditPaths | None = None) -> dict[str, Any]:
    """Create the audit key for a database of legacy events (or none) and anchor its chain.

    Refused when the key is missing but checkpoints exist. Returns {"created", "key_file", "key_id",
    "anchored_seq"} (anchored_seq None when the database was already anchored).
    """
    if not is_write_session(session):
        raise RuntimeError("init_key needs a write session")
    if session.info.get(_TXN) is not None:
        raise RuntimeError("init_key must run in its own transaction, before any append_event")
    paths = paths or audit_paths()
    head = _locked_head(session)
    existed = load_key(paths.key_file) is not None
    txn = _begin(session, head, paths, create_for_legacy=True)
    session.info[_TXN] = txn  # released when the caller's transaction ends
    assert txn.key is not None  # create_for_legacy: _begin returned a key or raised
    return {"created": not existed, "key_file": str(paths.key_file), "key_id": key_id(txn.key),
            "anchored_seq": txn.anchored_seq}


# --------------------------------------------------------------------------- verifying

@dataclass(frozen=True)
class ChainReport:
    """Outcome of verify_chain. ``problem``/``reason`` describe the first finding; ``findings`` lists all."""

    ok: bool
    events: int
    first_bad_id: int | None = None
    problem: str | None = None
    reason: str | None = None
    first_bad_seq: int | None = None
    authenticated: int = 0
    legacy: int = 0
    checkpoint_seq: int | None = None
    findings: tuple[str, ...] = ()
    mode: str = "full"  # or "incremental": resumed from the last verified seq
    verified_from: int | None = None  # incremental: the seq verification resumed after
    rows_read: int = 0  # event rows read from the database by this verification
    archived: int = 0  # events in archive segments (storage.archive)
    segments: int = 0

    @property
    def exit_code(self) -> int:
        """0 intact, 2 tampered, 3 cannot verify (key missing or unreadable)."""
        if self.ok:
            return EXIT_OK
        return EXIT_UNKNOWN if self.problem in CANNOT_VERIFY else EXIT_CRITICAL

    def summary(self) -> str:
        if self.ok:
            text = f"audit chain intact: {self.events} events ({self.authenticated} authenticated, {self.legacy} legacy)"
            if self.segments:
                text += f", {self.archived} archived in {self.segments} segment{'s' * (self.segments > 1)}"
            if self.checkpoint_seq is not None:
                text += f", checkpoint at seq {self.checkpoint_seq}"
                if self.verified_from is not None:
                    text += f", verified incrementally from seq {self.verified_from} ({self.rows_read} events read)"
                return text
            if self.legacy:
                return f"{text}, not anchored: run `selfheal audit init-key` to authenticate new events"
            return text
        if self.problem in CANNOT_VERIFY:
            return f"audit chain cannot be verified: {self.reason}"
        more = len(self.findings) - 1
        return f"audit chain broken: {self.reason}" + (f" (and {more} more finding{'s' * (more > 1)})" if more > 0 else "")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = list(self.findings)
        return data


@dataclass
class _Finding:
    problem: str
    reason: str
    seq: int | None = None
    event_id: int | None = None


_MAX_FINDINGS = 50


class _Walk:
    """Collects findings (the first few hundred are plenty to name what happened)."""

    def __init__(self) -> None:
        self.findings: list[_Finding] = []

    def add(self, problem: str, reason: str, seq: int | None = None, event_id: int | None = None) -> None:
        if len(self.findings) < _MAX_FINDINGS:
            self.findings.append(_Finding(problem, reason, seq, event_id))


def _snapshot_head(session: Session) -> tuple[AuditHead | None, int]:
    table = AuditEvent.__table__
    head = session.exec(select(AuditHead).where(AuditHead.id == _HEAD_ID).execution_options(populate_existing=True)).first()
    max_seq = session.execute(sa.select(sa.func.max(table.c.seq))).scalar() or 0
    return head, int(max_seq)


def verify_chain(session: Session, *, batch_size: int = 5000, paths: AuditPaths | None = None,
                 incremental: bool = False) -> ChainReport:
    """Authenticate every event, check every link and compare the chain with the checkpoint file.

    Archived events (storage.archive) are checked through their segments: every segment file against
    the sha256 its authenticated manifest line records, and with a full verification (the default)
    every event inside re-authenticated. ``incremental``: resume after the last seq a verification of
    this database found intact (the ``<checkpoint file>.verified`` line, authenticated with the key):
    only newer events are read and authenticated, plus one row (the resume point, which must still
    match) and a count of the verified range (events deleted from it are still found). Anything else
    changed inside the verified range is found only by a full verification."""
    from storage import archive as archive_mod

    paths = paths or audit_paths()
    db = database_id(session)
    try:
        key = load_key(paths.key_file)
        key_problem = None
    except AuditKeyError as exc:
        key, key_problem = None, str(exc)

    # The head and the checkpoint file must describe the same moment. Appenders hold the exclusive
    # lock from their append until their pin is written, so under the shared lock no append is half
    # done. A SQLite write session must take the database lock first (an appender holding it waits for
    # our flock: a deadlock otherwise); holding it, no append can be half done either.
    sqlite_writer = session.get_bind().dialect.name == "sqlite" and is_write_session(session)
    if sqlite_writer:
        head, max_seq = _snapshot_head(session)
    with _shared_checkpoint_lock(paths):
        if not sqlite_writer:
            head, max_seq = _snapshot_head(session)
        exists, checkpoints, malformed = read_checkpoints(paths.checkpoint_file, key)

    walk = _Walk()
    kid = key_id(key) if key is not None else None
    for number in malformed:
        walk.add("checkpoint", f"checkpoint file line {number} is not a checkpoint (edited, or cut mid-line)")
    foreign = sorted({cp.kid for cp in checkpoints if not cp.authentic and cp.kid != kid})
    if key is not None and foreign:
        walk.add("key", f"key file replaced: checkpoints were written with key id {', '.join(foreign)}, "
                        f"{paths.key_file} holds key id {kid}")
    if key is not None:
        for cp in checkpoints:
            if not cp.authentic and cp.kid == kid:
                walk.add("checkpoint", f"checkpoint file line {cp.line_no} fails authentication (edited)")
    mine = [cp for cp in checkpoints if cp.db == db and cp.authentic]
    _check_checkpoint_order(mine, walk)

    anchor = mine[0] if mine and mine[0].kind in ("anchor", "reanchor") else None
    pins: dict[int, list[Checkpoint]] = {}
    for cp in mine:
        pins.setdefault(cp.seq, []).append(cp)
    if anchor is not None and anchor.seq == 0:
        pins.pop(0, None)  # the anchor of a chain that started keyed pins the genesis, not an event

    # Archived events: the segments' manifest lines of this database, checked before the live chain.
    segments, bad_lines = archive_mod.read_manifest(paths, key)
    for number in bad_lines:
        walk.add("archive", f"archive manifest line {number} is not a segment line (edited, or cut mid-line)")
    if key is not None:
        for seg in segments:
            if not seg.authentic and seg.kid == kid:
                walk.add("archive", f"archive manifest line {seg.line_no} ({seg.name}) fails authentication (edited)")
    # Without the key nothing can be authenticated: the segments still say where the live chain starts.
    mine_segments = [seg for seg in segments if seg.db == db and (seg.authentic or key is None)]
    legacy_cap = anchor.seq if anchor is not None else 0
    totals = archive_mod.check_segments(mine_segments, key, paths, full=not incremental, legacy_limit=legacy_cap,
                                        pins=pins, add=walk.add)
    start = _Start(totals.boundary_seq, totals.boundary_hash, totals.events, totals.authenticated, totals.legacy)
    verified_from = None
    if incremental and key is not None:
        resumed = _resume_point(session, paths, key, db, totals.boundary_seq, max_seq, walk)
        if resumed is not None:
            start, verified_from = resumed, resumed.seq

    # No key and no checkpoint ever written: a database that has only known plain sha256 events.
    unkeyed_mode = key is None and key_problem is None and not checkpoints and not malformed
    walked, authenticated, legacy, last_seq, last_hash = _walk_events(
        session, walk, key, anchor, pins, head, max_seq, batch_size, unkeyed_mode=unkeyed_mode, start=start)
    events = start.events + walked
    authenticated += start.authenticated
    legacy += start.legacy
    max_cp = max((cp.seq for cp in mine), default=None)
    extra = {"mode": "incremental" if incremental else "full", "verified_from": verified_from, "rows_read": walked,
             "archived": totals.events, "segments": totals.segments}
    if key is not None:
        _check_against_checkpoints(walk, paths, exists, max_cp, events - totals.events, last_seq, authenticated)
    elif not unkeyed_mode:
        reason = key_problem or f"key missing: {paths.key_file} does not exist"
        reason = f"{reason}: cannot authenticate {events - legacy} events"
        problem = "key_unreadable" if key_problem else "key_missing"
        # Gaps and reordering need no key: they still make the verdict "tampered", the key line follows them.
        if not any(f.problem in ("deleted", "reordered", "inserted") for f in walk.findings):
            return ChainReport(False, events, None, problem, reason, None, authenticated, legacy, None, (reason,))
        walk.add(problem, reason)
    if walk.findings:
        first = walk.findings[0]
        return ChainReport(False, events, first.event_id, first.problem, first.reason, first.seq, authenticated, legacy,
                           max_cp, tuple(f.reason for f in walk.findings), **extra)
    if key is not None and last_seq:
        _save_resume_point(paths, key, db, _Start(last_seq, last_hash, events, authenticated, legacy))
    return ChainReport(True, events, None, None, None, None, authenticated, legacy, max_cp, **extra)


def _check_checkpoint_order(mine: list[Checkpoint], walk: _Walk) -> None:
    if mine and mine[0].kind == "reanchor":
        walk.add("checkpoint", f"the checkpoints of this database were lost: re-anchored at seq {mine[0].seq} "
                               f"on {mine[0].ts} (line {mine[0].line_no}); events deleted before that cannot be ruled out",
                 mine[0].seq)
    for before, after in zip(mine, mine[1:], strict=False):
        if after.kind != "pin":
            walk.add("checkpoint", f"checkpoint file line {after.line_no}: a second {after.kind} of this database at seq "
                                   f"{after.seq}: its checkpoints were lost", after.seq)
        elif after.seq <= before.seq:
            walk.add("truncated", f"checkpoints go backwards at line {after.line_no}: seq {before.seq} then {after.seq}: "
                                  f"the database was cut back to seq {after.seq - 1} and appended to again", after.seq)


@dataclass(frozen=True)
class _Start:
    """Where a walk of the live events starts: after ``seq`` (whose hash the next event links to), with
    the counts of what lies before it (archived or verified earlier)."""

    seq: int = 0
    hash: str = GENESIS_HASH
    events: int = 0
    authenticated: int = 0
    legacy: int = 0


_VERIFIED_DOMAIN = b"selfheal-audit-verified\0"


def _resume_point(session: Session, paths: AuditPaths, key: bytes, db: str, boundary: int, max_seq: int,
                  walk: _Walk) -> _Start | None:
    """The last verified point of this database, if it is authentic and still matches the database."""
    try:
        data = paths.verified_file.read_bytes()
    except OSError:
        return None
    point = None
    for raw in data.split(b"\n"):
        parts = raw.decode("ascii", "replace").split(" ")
        if len(parts) != 10 or parts[0] != "v1" or parts[1] != db or not all(p.isdigit() for p in parts[2:3] + parts[4:7]):
            continue
        mac = hmac.digest(key, _VERIFIED_DOMAIN + " ".join(parts[:-1]).encode("ascii"), "sha256").hex()
        if hmac.compare_digest(mac, parts[-1]):
            point = _Start(int(parts[2]), parts[3], int(parts[4]), int(parts[5]), int(parts[6]))
    if point is None or point.seq < boundary or point.seq > max_seq:
        return None  # nothing verified yet, or the database was cut back below it: the walk finds out
    table = AuditEvent.__table__
    row = session.execute(sa.select(table.c.id, table.c.seq, table.c.created_at, table.c.kind, table.c.subject,
                                    table.c.actor, table.c.payload, table.c.prev_hash, table.c.hash)
                          .where(table.c.seq == point.seq)).first()
    present = session.execute(sa.select(sa.func.count()).select_from(table)
                              .where(table.c.seq > boundary, table.c.seq <= point.seq)).scalar_one()
    if present != point.seq - boundary:
        walk.add("deleted", f"{point.seq - boundary - present} event(s) deleted from seq {boundary + 1}..{point.seq}, "
                            "which an earlier verification found intact; run `selfheal audit verify --full`", boundary + 1)
        return None
    content = (row.seq, row.created_at, row.kind, row.subject, row.actor, row.payload, row.prev_hash) if row else None
    if row is None or row.hash != point.hash or not (
            hmac.compare_digest(row.hash, event_mac(key, *content)) or hmac.compare_digest(row.hash, event_hash(*content))):
        walk.add("rewritten", f"event at seq {point.seq}, where the last verification ended, was rewritten since",
                 point.seq, row.id if row else None)
        return None
    return point


def _save_resume_point(paths: AuditPaths, key: bytes, db: str, point: _Start) -> None:
    """Record where this database's chain was found intact (for the next incremental verification)."""
    body = (f"v1 {db} {point.seq} {point.hash} {point.events} {point.authenticated} {point.legacy} {key_id(key)} "
            f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    line = f"{body} {hmac.digest(key, _VERIFIED_DOMAIN + body.encode('ascii'), 'sha256').hex()}\n".encode("ascii")
    path = paths.verified_file
    try:
        kept = [raw + b"\n" for raw in path.read_bytes().split(b"\n") if raw and raw.split(b" ")[1:2] != [db.encode()]]
    except OSError:
        kept = []
    try:
        write_atomic(path, b"".join(kept) + line, mode=0o600, what="audit verification point")
    except (SelfHealError, OSError) as exc:
        log.warning("audit verification point not saved: %s", exc)


def _walk_events(session: Session, walk: _Walk, key: bytes | None, anchor: Checkpoint | None,
                 pins: dict[int, list[Checkpoint]], head: AuditHead | None, max_seq: int, batch_size: int,
                 *, unkeyed_mode: bool, start: _Start = _Start()) -> tuple[int, int, int, int, str]:
    """Check every event after ``start.seq`` up to ``max_seq``; returns (events, authenticated, legacy,
    last seq, last hash)."""
    table = AuditEvent.__table__
    query = sa.select(
        table.c.id, table.c.seq, table.c.created_at, table.c.kind, table.c.subject,
        table.c.actor, table.c.payload, table.c.prev_hash, table.c.hash,
    ).where(table.c.seq <= max_seq, table.c.seq > start.seq).order_by(table.c.seq)
    head_seq = head.seq if head is not None else 0
    legacy_limit = anchor.seq if anchor is not None else (max_seq if key is None or not pins else 0)
    events = authenticated = legacy = 0
    prev: Any = None
    keyed_seen = False
    for row in session.execute(query, execution_options={"yield_per": batch_size}):
        events += 1
        where = f"event {row.id} (seq {row.seq})"
        content = (row.seq, row.created_at, row.kind, row.subject, row.actor, row.payload, row.prev_hash)
        is_keyed = key is not None and hmac.compare_digest(row.hash, event_mac(key, *content))
        is_legacy = not is_keyed and hmac.compare_digest(row.hash, event_hash(*content))
        if is_keyed:
            authenticated += 1
            keyed_seen = True
        elif is_legacy and row.seq <= legacy_limit and not keyed_seen:
            legacy += 1
        elif key is None and not unkeyed_mode:
            pass  # cannot tell: reported once as "key missing"
        elif is_legacy:
            walk.add("edited", f"{where}: authentication failed: its hash is a plain sha256 where the key's HMAC "
                               "belongs (rewritten by someone without the key)", row.seq, row.id)
        elif unkeyed_mode:
            walk.add("edited", f"{where} was edited: its content no longer matches its hash "
                               "(or it was written with an audit key that is now missing)", row.seq, row.id)
        else:
            walk.add("edited", f"{where}: authentication failed (edited, or rehashed with another key)", row.seq, row.id)

        expected_seq = start.seq + 1 if prev is None else prev.seq + 1
        if row.seq != expected_seq:
            first, last = expected_seq, row.seq - 1
            span, count = (str(first) if first == last else f"{first}..{last}"), last - first + 1
            walk.add("deleted", f"seq gap {span} ({count} event{'s' * (count > 1)} deleted) before {where}", first, row.id)
        elif row.prev_hash != (start.hash if prev is None else prev.hash):
            before = (f"event {prev.id} (seq {prev.seq})" if prev is not None
                      else f"the last archived event (seq {start.seq})" if start.seq else "the start of the chain")
            walk.add("relinked", f"{where}: prev_hash does not match the hash of {before}: "
                                 "an event was rewritten, or events were deleted and renumbered", row.seq, row.id)
        if prev is not None and row.id <= prev.id:
            walk.add("reordered", f"{where} comes after event {prev.id} in the chain but has a smaller id: "
                                  "events were reordered", row.seq, row.id)
        if head is not None and row.seq == head_seq + 1:
            walk.add("inserted", f"{where} lies beyond the recorded chain head (seq {head_seq}): "
                                 "written around append_event", row.seq, row.id)
        for cp in pins.get(row.seq, ()):
            if cp.hash != row.hash:
                walk.add("rewritten", f"{where} differs from checkpoint line {cp.line_no}: it was rewritten after "
                                      "being recorded", row.seq, row.id)
        prev = row

    last_seq = prev.seq if prev is not None else start.seq
    last_hash = prev.hash if prev is not None else start.hash
    if head is not None and head.seq > last_seq:
        walk.add("deleted", f"the last {head.seq - last_seq} event(s) were deleted: the head records seq {head.seq} "
                            f"ending at event {head.last_event_id}, the table ends at seq {last_seq}",
                 last_seq + 1, head.last_event_id)
    elif head is not None and prev is not None and head.seq == last_seq and head.last_hash != prev.hash:
        walk.add("edited", f"event {prev.id} (seq {prev.seq}), the last one, does not match the hash recorded in "
                           "the chain head", prev.seq, prev.id)
    return events, authenticated, legacy, last_seq, last_hash


def _check_against_checkpoints(walk: _Walk, paths: AuditPaths, exists: bool,
                               max_cp: int | None, events: int, last_seq: int, authenticated: int) -> None:
    if max_cp is None:
        if authenticated:
            where = "is missing" if not exists else "has no checkpoint for this database"
            walk.add("checkpoint", f"checkpoint file {where} ({paths.checkpoint_file}) although {authenticated} "
                                   "authenticated events exist: deleted or replaced")
        return
    if max_cp > last_seq:
        if events == 0:
            walk.add("wiped", f"wiped: 0 events in the database, checkpoint says {max_cp}", 1)
        else:
            walk.add("truncated", f"truncated: database ends at seq {last_seq}, checkpoint says {max_cp}", last_seq + 1)
    elif max_cp < last_seq:
        walk.add("checkpoint", f"checkpoint file is behind the database: last checkpoint seq {max_cp}, database ends at "
                               f"seq {last_seq} (the file was truncated or restored from an older copy; or a process "
                               "died between committing and pinning, which the next append repairs)", max_cp + 1)
