"""Promotions: a run's winner reviewed, applied to the target config, rejected or expired.

Functions the CLI, the worker and the dashboard call (each takes an open write session, or None to
open its own):

  approve_promotion(session_or_none, promotion_id, actor, *, settings=None, now=None) -> dict
      pending_review → approved → applied (or failed, with the old file restored)
  reject_promotion(session_or_none, promotion_id, actor, reason, *, now=None) -> dict
  expire_promotions(now=None, session=None) -> list[dict]   pending_review past expires_at → expired

Applying writes the target config (``tuning.target_config``, YAML with ``vllm: {gpu_memory_utilization:
…}``) atomically: a backup copy of the old file first, then a temporary file in the same directory,
fsync, ``os.replace``. An optional reload command (argv list, ``tuning.reload_command``) follows; when
it fails, the backup is put back and the promotion is marked failed. Every transition is audited.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healing.errors import ConfigError, InputError
from healing.tuning.actuators import canonical_param, to_decimal

if TYPE_CHECKING:
    from sqlmodel import Session

    from healing.config import Settings

RELOAD_TIMEOUT_S = 120


@contextmanager
def _session(session: Session | None) -> Iterator[Session]:
    if session is not None:
        yield session
        return
    from storage.engine import session_scope

    with session_scope() as own:
        yield own


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


# --------------------------------------------------------------------------- the target file

def read_target_values(path: Path | None) -> dict[str, Decimal]:
    """The running vllm.* values from the target YAML ({} when there is no file); bad YAML → ConfigError."""
    if path is None or not path.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read tuning.target_config {path}: {type(exc).__name__}") from None
    except yaml.YAMLError:
        raise ConfigError(f"tuning.target_config {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"tuning.target_config {path} must hold a mapping")
    out: dict[str, Decimal] = {}
    nested = data.get("vllm") or {}
    if not isinstance(nested, dict):
        raise ConfigError(f"tuning.target_config {path}: 'vllm' must be a mapping")
    items = [(f"vllm.{k}", v) for k, v in nested.items()] + [(k, v) for k, v in data.items() if str(k).startswith("vllm.")]
    for name, value in items:
        try:
            key = canonical_param(str(name))
        except KeyError:
            continue  # other vLLM settings in the same file are not ours to read
        try:
            out[key] = to_decimal(value)
        except (ArithmeticError, TypeError, ValueError):
            raise ConfigError(f"tuning.target_config {path}: {name} must be a number, got {value!r}") from None
    return out


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_target_values(path: Path, new_values: Mapping[str, Any], backup_tag: str) -> str | None:
    """Set the vllm.* values in the target YAML atomically; returns the backup path (None: no old file)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    backup: str | None = None
    if path.exists():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"tuning.target_config {path} must hold a mapping")
        backup_path = path.with_name(f"{path.name}.bak-{backup_tag}")
        shutil.copy2(path, backup_path)
        backup = str(backup_path)
    nested = data.get("vllm")
    if not isinstance(nested, dict):
        nested = {}
    for name, value in new_values.items():
        short = canonical_param(name).split(".", 1)[1]
        data.pop(canonical_param(name), None)  # a dotted top-level duplicate would shadow the nested value
        nested[short] = value
    data["vllm"] = nested
    _atomic_write(path, yaml.safe_dump(data, sort_keys=False))
    return backup


def _restore(path: Path, backup: str | None) -> None:
    if backup is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    _atomic_write(path, Path(backup).read_text(encoding="utf-8"))


def run_reload(command: tuple[str, ...] | None, run: Callable[..., Any] = subprocess.run) -> str | None:
    """Run the reload command; None on success, else a one-line reason."""
    if not command:
        return None
    try:
        proc = run(list(command), capture_output=True, text=True, timeout=RELOAD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"reload command {command[0]!r} could not run: {type(exc).__name__}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        return f"reload command exited {proc.returncode}" + (f": {tail[-1][:200]}" if tail else "")
    return None


# --------------------------------------------------------------------------- transitions

def _require_pending(session: Session, promotion_id: int, now: datetime) -> dict[str, Any]:
    from storage import tuning_queries as tq

    promo = tq.lock_promotion(session, promotion_id)
    if promo is None:
        raise InputError(f"promotion {promotion_id} does not exist")
    if promo["status"] != "pending_review":
        raise InputError(f"promotion {promotion_id} is {promo['status']}, not pending_review")
    expires = promo.get("expires_at")
    if expires is not None and expires <= now:
        # expire_promotions marks it; a decision after the deadline is refused either way
        raise InputError(f"promotion {promotion_id} expired at {expires:%Y-%m-%d %H:%M} UTC")
    return promo


def apply_promotion(session: Session, promo: Mapping[str, Any], actor: str, reload_command: tuple[str, ...] | None,
                    now: datetime) -> dict[str, Any]:
    """Write an approved promotion's values to its target file, reload, and record applied/failed."""
    from storage import tuning_queries as tq

    target = promo.get("target_file")
    if not target:
        return tq.set_promotion_status(session, promo["id"], "failed", actor=actor, now=now,
                                       reason="no tuning.target_config to apply the values to")
    path = Path(target)
    try:
        backup = write_target_values(path, promo["new_values"], f"{now:%Y%m%dT%H%M%S}-p{promo['id']}")
    except (OSError, ConfigError) as exc:
        reason = str(exc) if isinstance(exc, ConfigError) else f"cannot write {path}: {exc.strerror or type(exc).__name__}"
        return tq.set_promotion_status(session, promo["id"], "failed", actor=actor, reason=reason, now=now)
    problem = run_reload(reload_command)
    if problem is not None:
        _restore(path, backup)
        return tq.set_promotion_status(session, promo["id"], "failed", actor=actor, now=now, backup_path=backup,
                                       reason=f"{problem}; {path} restored from the backup")
    return tq.set_promotion_status(session, promo["id"], "applied", actor=actor, applied_at=now, backup_path=backup, now=now,
                                   detail={"reload_command": list(reload_command) if reload_command else None})


def approve_promotion(session: Session | None, promotion_id: int, actor: str, *, settings: Settings | None = None,
                      now: datetime | None = None) -> dict[str, Any]:
    """A human approves a pending promotion; it is applied at once. Returns the promotion (applied or failed)."""
    from healing.config import load_settings
    from healing.tuning.runner_config import parse_runner_settings
    from storage import tuning_queries as tq

    now = _now(now)
    settings = settings or load_settings()
    runner = parse_runner_settings(settings.section("tuning"))
    with _session(session) as s:
        promo = _require_pending(s, promotion_id, now)
        approved = tq.set_promotion_status(s, promotion_id, "approved", actor=actor, decided=True, now=now,
                                           reason=promo.get("reason"))
        return apply_promotion(s, approved, actor, runner.reload_command, now)


def reject_promotion(session: Session | None, promotion_id: int, actor: str, reason: str | None = None, *,
                     now: datetime | None = None) -> dict[str, Any]:
    """A human rejects a pending promotion (nothing is written)."""
    from storage import tuning_queries as tq

    now = _now(now)
    with _session(session) as s:
        _require_pending(s, promotion_id, now)
        return tq.set_promotion_status(s, promotion_id, "rejected", actor=actor, decided=True, now=now,
                                       reason=reason or f"rejected by {actor}")


def expire_promotions(now: datetime | None = None, session: Session | None = None) -> list[dict[str, Any]]:
    """Mark every pending_review promotion past its expires_at as expired; returns those promotions."""
    from storage import tuning_queries as tq

    now = _now(now)
    with _session(session) as s:
        return [tq.set_promotion_status(s, pid, "expired", actor="tuning", now=now,
                                        reason="not reviewed before it expired") for pid in tq.due_promotions(s, now)]
