"""Promotions: a run's winner reviewed, applied to the target config, rejected, expired or rolled back.

Functions the CLI, the worker, the dashboard and the REST API call (each takes an open write session,
or None to open its own):

  approve_promotion(session_or_none, promotion_id, actor, *, settings=None, now=None) -> dict
      pending_review → approved → applied (or failed, with the old file restored); the watch starts
  reject_promotion(session_or_none, promotion_id, actor, reason, *, now=None) -> dict
  expire_promotions(now=None, session=None) -> list[dict]   pending_review past expires_at → expired
  rollback_promotion(session_or_none, promotion_id, actor, *, reason=None, settings=None, now=None) -> dict
      applied → rolled_back: the backup restored, the reload command run (InputError: unknown / not
      applied; RollbackError: the backup cannot be put back)

The target file (``tuning.target_config``) is vLLM's own ``--config`` YAML, flag names as keys
(``gpu-memory-utilization: 0.85``). A changed value is replaced in the text itself, so other keys,
comments, quoting and order stay byte for byte; a missing key is appended. The older nested form
(``vllm: {gpu_memory_utilization: …}``) is read, and migrated to flat keys on the first apply (said in
the ``promotion.applied`` audit event; the backup keeps the old form). Writing is atomic
(healing.safeio.write_atomic: temp file, fsync, rename) after a byte-exact backup; a symlink at the
target is refused. An optional reload command (argv list, ``tuning.reload_command``) follows; when it
fails, the backup is put back and the promotion is marked failed. Every transition is audited.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healing.errors import EXIT_CRITICAL, ConfigError, InputError, SelfHealError
from healing.safeio import read_regular, refuse_symlink, write_atomic
from healing.tuning.actuators import canonical_param, to_decimal

if TYPE_CHECKING:
    from sqlmodel import Session

    from healing.config import Settings
    from healing.tuning.runner_config import RunnerSettings

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
#
# The target is the file the service itself reads: vLLM's ``--config`` YAML, whose top-level keys are
# flag names (vLLM 0.33 FlexibleArgumentParser.load_config_file turns ``key: value`` into ``--key value``
# and then accepts ``_`` and ``-`` alike). The older selfheal form ``vllm: {gpu_memory_utilization: …}``
# (and top-level ``vllm.gpu_memory_utilization`` keys) is still read, and moved to flat keys on the
# first apply: vLLM itself could not read it (``vllm:`` would become an unknown ``--vllm`` flag).

NESTED_KEY = "vllm"
_SCALAR = re.compile(r"""'[^'\n]*'|"[^"\n]*"|[^\s#'"][^\s#]*""")
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")


@dataclass(frozen=True)
class TargetWrite:
    """What :func:`write_target_file` did: the backup, whether the nested form was migrated, the keys set."""

    backup: str | None
    migrated: bool
    keys: dict[str, str]


def _param_value(path: Path, name: str, value: Any) -> Decimal | None:
    """A number as vLLM reads it: ``32k`` = 32000, ``1K`` = 1024 (human_readable_int); ``auto``/-1 → None."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto" or text == "-1":
            return None
        m = _HUMAN_INT.fullmatch(text)
        if m:
            number, suffix = m.groups()
            factor = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}.get(suffix) or 2 ** (10 * "KMGT".index(suffix) + 10)
            return Decimal(int(Decimal(number) * factor))
    try:
        number = to_decimal(value)
    except (ArithmeticError, TypeError, ValueError):
        raise ConfigError(f"tuning.target_config {path}: {name} must be a number, got {value!r}") from None
    return None if number == -1 else number


def _load_mapping(path: Path, text: str) -> dict[Any, Any]:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise ConfigError(f"tuning.target_config {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"tuning.target_config {path} must hold a mapping")
    nested = data.get(NESTED_KEY)
    if nested is not None and not isinstance(nested, dict):
        raise ConfigError(f"tuning.target_config {path}: 'vllm' must be a mapping")
    return data


def _our_keys(data: Mapping[Any, Any]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Our parameters found in the file: {dotted name: [flat keys]} and {dotted name: [nested/dotted keys]}."""
    flat: dict[str, list[str]] = {}
    legacy: dict[str, list[str]] = {}
    for key in data:
        name = str(key)
        if name == NESTED_KEY:
            continue
        try:
            param = canonical_param(name)
        except KeyError:
            continue
        (legacy if name.startswith("vllm.") else flat).setdefault(param, []).append(name)
    for key in data.get(NESTED_KEY) or {}:
        with contextlib.suppress(KeyError):
            legacy.setdefault(canonical_param(f"vllm.{key}"), []).append(f"vllm.{key}")
    return flat, legacy


def _read_text(path: Path) -> str:
    # reading through a symlink is harmless (the running values); only writing refuses one
    try:
        return read_regular(path, what="the target config").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read tuning.target_config {path}: not UTF-8 text") from None
    except InputError as exc:
        raise ConfigError(f"cannot read tuning.target_config {exc}") from None


def read_target_values(path: Path | None) -> dict[str, Decimal]:
    """The running values from the target YAML ({} when there is no file); bad YAML → ConfigError.

    Flat vLLM keys (``gpu-memory-utilization``/``gpu_memory_utilization``) win over the old nested form;
    ``max-model-len: 32k`` reads as 32000 and ``auto``/-1 as unknown, as vLLM parses them.
    """
    if path is None or not path.exists():
        return {}
    data = _load_mapping(path, _read_text(path))
    nested = data.get(NESTED_KEY) or {}
    out: dict[str, Decimal] = {}
    flat, legacy = _our_keys(data)
    for param, names in [*legacy.items(), *flat.items()]:  # flat last: it is what vLLM reads
        for name in names:
            raw = nested[name[5:]] if name.startswith("vllm.") and name[5:] in nested and name not in data else data[name]
            value = _param_value(path, name, raw)
            if value is not None:
                out[param] = value
            else:
                out.pop(param, None)
    return out


def _number_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ConfigError(f"a promotion value must be a number, got {value!r}")
    return repr(value) if isinstance(value, float) else str(value)


def _flat_name(param: str) -> str:
    return param.split(".", 1)[1].replace("_", "-")


def _splice(text: str, data: Any, updates: Mapping[str, str], new_keys: Mapping[str, str]) -> str | None:
    """Replace the value text of existing top-level keys in place and append new keys; None when a value
    is not a one-line scalar (the caller then re-emits the document)."""
    lines = text.splitlines(keepends=True)
    for key, value in updates.items():
        line, col = data.lc.value(key)
        if line >= len(lines):
            return None
        m = _SCALAR.match(lines[line], col)
        if m is None or lines[line][:col].strip(" ") == "":
            return None  # a block value on its own line: not a simple scalar
        lines[line] = lines[line][:m.start()] + value + lines[line][m.end():]
    out = "".join(lines)
    if new_keys:
        if out and not out.endswith("\n"):
            out += "\n"
        out += "".join(f"{key}: {value}\n" for key, value in new_keys.items())
    return out


def render_target(path: Path, text: str, new_values: Mapping[str, Any]) -> tuple[str, bool, dict[str, str]]:
    """The new file text with ``new_values`` set: (text, migrated from the nested form, {param: key written}).

    Other keys, comments and order stay as they were: a changed value is replaced in the text itself,
    a missing key is appended (dash spelling, as ``vllm serve --help`` prints it). Only the migration of
    the nested form re-emits the document (ruamel.yaml round trip, comments kept).
    """
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.util import load_yaml_guess_indent

    plain = _load_mapping(path, text) if text.strip() else {}
    values = {canonical_param(k): _number_text(v) for k, v in new_values.items()}
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    try:
        data = rt.load(text) if text.strip() else None
    except YAMLError:
        raise ConfigError(f"tuning.target_config {path} is not valid YAML") from None
    flat, legacy = _our_keys(plain)
    migrate = NESTED_KEY in plain or any(n.startswith("vllm.") and n in plain for names in legacy.values() for n in names)
    written: dict[str, str] = {}
    if data is not None and not migrate:
        updates = {}
        for param, value in values.items():
            key = flat[param][0] if param in flat else _flat_name(param)
            written[param] = key
            if param in flat:
                updates[key] = value
        new_keys = {written[p]: v for p, v in values.items() if p not in flat}
        result = _splice(text, data, updates, new_keys)
        if result is not None and _load_mapping(path, result) == {**plain, **{written[p]: _load_mapping(path, f"x: {v}")["x"]
                                                                              for p, v in values.items()}}:
            return result, False, written
    if data is None:
        out = "".join(f"{_flat_name(p)}: {v}\n" for p, v in values.items())
        return out, False, {p: _flat_name(p) for p in values}
    # re-emit: the nested form moves to flat keys where the vllm: mapping stood
    _, indent, offset = load_yaml_guess_indent(text)
    rt.indent(mapping=indent, sequence=indent, offset=offset)
    keys = list(data.keys())
    position = keys.index(NESTED_KEY) if NESTED_KEY in data else len(keys)
    moved: list[tuple[str, Any]] = []
    nested = data.pop(NESTED_KEY, None) or {}
    for key, value in nested.items():
        moved.append((str(key).replace("_", "-"), value))
    for key in [k for k in keys if str(k).startswith("vllm.")]:
        moved.append((str(key)[5:].replace("_", "-"), data.pop(key)))
        position -= 1 if keys.index(key) < position else 0
    existing = {_param_or_flag(str(k)): str(k) for k in data}
    for key, value in moved:
        param = _param_or_flag(key)
        if param in existing:
            continue  # a flat key is what vLLM read: it wins over the old nested value
        data.insert(position, key, value)
        existing[param] = key
        position += 1
    for param, value in values.items():
        key = existing.get(param) or _flat_name(param)
        written[param] = key
        data[key] = _load_mapping(path, f"x: {value}")["x"]
    buf = io.StringIO()
    rt.dump(data, buf)
    return buf.getvalue(), True, written


def _param_or_flag(key: str) -> str:
    """Our dotted parameter name for a key, else the flag name in dash spelling (how vLLM compares them)."""
    try:
        return canonical_param(key)
    except KeyError:
        return key.replace("_", "-")


def write_target_file(path: Path, new_values: Mapping[str, Any], backup_tag: str) -> TargetWrite:
    """Set ``new_values`` in the target file atomically, after a byte-exact backup of the old file.

    A symlink (or anything but a regular file) at ``path`` is refused: nothing is written through it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_symlink(path, "tuning.target_config")
    backup: str | None = None
    text = ""
    mode = 0o644
    if os.path.lexists(path):
        raw = read_regular(path, follow_symlinks=False, what="the target config")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read tuning.target_config {path}: not UTF-8 text") from None
        mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
        rendered, migrated, keys = render_target(path, text, new_values)
        backup_path = path.with_name(f"{path.name}.bak-{backup_tag}")
        write_atomic(backup_path, raw, mode=mode, what="the target config backup")
        backup = str(backup_path)
    else:
        rendered, migrated, keys = render_target(path, text, new_values)
    write_atomic(path, rendered, mode=mode, what="tuning.target_config")
    return TargetWrite(backup, migrated, keys)


def write_target_values(path: Path, new_values: Mapping[str, Any], backup_tag: str) -> str | None:
    """Set the values in the target YAML atomically; returns the backup path (None: no old file)."""
    return write_target_file(path, new_values, backup_tag).backup


def restore_target(path: Path, backup: str | None) -> bytes:
    """Put the backup's bytes back at ``path`` (atomic; no backup: the file did not exist, remove it).
    Returns the bytes restored."""
    refuse_symlink(path, "tuning.target_config")
    if backup is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return b""
    data = read_regular(backup, follow_symlinks=False, what="the target config backup")
    mode = stat.S_IMODE(os.stat(backup, follow_symlinks=False).st_mode)
    write_atomic(path, data, mode=mode, what="tuning.target_config")
    return data


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
                    now: datetime, runner: RunnerSettings | None = None) -> dict[str, Any]:
    """Write an approved promotion's values to its target file, reload, and record applied/failed.

    With ``runner`` (the tuning settings) the post-promotion watch starts: /metrics and the log
    positions are read just before the write, the window runs from the apply (healing.tuning.watch).
    """
    from healing.tuning import watch
    from storage import tuning_queries as tq

    target = promo.get("target_file")
    if not target:
        return tq.set_promotion_status(session, promo["id"], "failed", actor=actor, now=now,
                                       reason="no tuning.target_config to apply the values to")
    path = Path(target)
    baseline = watch.capture_baseline(runner, str(promo["subsystem"]), now) if runner is not None else None
    try:
        written = write_target_file(path, promo["new_values"], f"{now:%Y%m%dT%H%M%S}-p{promo['id']}")
    except (OSError, SelfHealError) as exc:
        reason = str(exc) if isinstance(exc, SelfHealError) else f"cannot write {path}: {exc.strerror or type(exc).__name__}"
        return tq.set_promotion_status(session, promo["id"], "failed", actor=actor, reason=reason, now=now)
    backup = written.backup
    problem = run_reload(reload_command)
    if problem is not None:
        restore_target(path, backup)
        return tq.set_promotion_status(session, promo["id"], "failed", actor=actor, now=now, backup_path=backup,
                                       reason=f"{problem}; {path} restored from the backup")
    detail: dict[str, Any] = {"reload_command": list(reload_command) if reload_command else None, "written_as": written.keys}
    if written.migrated:
        detail["migrated"] = (f"{path} moved from the nested 'vllm:' form to vLLM's flat --config keys "
                              "(the backup keeps the old form)")
    applied = tq.set_promotion_status(session, promo["id"], "applied", actor=actor, applied_at=now, backup_path=backup,
                                      now=now, detail=detail)
    if runner is not None and baseline is not None:
        watch.start_watch(session, applied, runner, baseline, now)
    return applied


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
        return apply_promotion(s, approved, actor, runner.reload_command, now, runner)


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


class RollbackError(SelfHealError):
    """The backup could not be put back (missing, unreadable, symlink in the way): exit 2."""

    exit_code = EXIT_CRITICAL


KIND_FILE_RESTORED = "promotion.file_restored"
KIND_RELOAD = "promotion.reload"


def rollback_promotion(session: Session | None, promotion_id: int, actor: str, *, reason: str | None = None,
                       settings: Settings | None = None, now: datetime | None = None, automatic: bool = False,
                       evidence: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Undo an applied promotion: the backup taken at the apply is restored, the reload command runs,
    the promotion becomes ``rolled_back`` and a running watch ends. Every step is audited.

    Returns the promotion dict plus ``rollback``: {"restored", "reload_problem", "alert_id"}; a failing
    reload still leaves the old file in place (``reload_problem`` says why; the CLI exits 2). An automatic
    rollback (the watch) raises a critical ``tuning_rollback`` alert. Unknown or not applied →
    InputError; the backup cannot be restored → RollbackError (nothing changed).
    """
    import hashlib

    from healing.config import load_settings
    from healing.tuning.runner_config import parse_runner_settings
    from storage import queries
    from storage import tuning_queries as tq
    from storage.audit import append_event

    now = _now(now)
    settings = settings or load_settings()
    runner = parse_runner_settings(settings.section("tuning"))
    with _session(session) as s:
        promo = tq.lock_promotion(s, promotion_id)
        if promo is None:
            raise InputError(f"promotion {promotion_id} does not exist")
        if promo["status"] != "applied":
            raise InputError(f"promotion {promotion_id} is {promo['status']}, not applied")
        if not promo.get("target_file"):
            raise RollbackError(f"promotion {promotion_id} has no target file to restore")
        later = tq.later_applied(s, promotion_id, str(promo["target_file"]))
        if later:
            # its backup predates them: restoring it would silently undo a newer change as well
            raise InputError(f"promotion {promotion_id} cannot be rolled back before promotion {later[-1]}, applied later "
                             f"to the same file {promo['target_file']}: roll that back first")
        path, backup = Path(promo["target_file"]), promo.get("backup_path")
        before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        try:
            restored = restore_target(path, backup)
        except (OSError, SelfHealError) as exc:
            text = str(exc) if isinstance(exc, SelfHealError) else f"{exc.strerror or type(exc).__name__}"
            raise RollbackError(f"cannot roll back promotion {promotion_id}: {text}") from None
        why = " ".join((reason or f"rolled back by {actor}").split())
        append_event(s, KIND_FILE_RESTORED, promo["subsystem"], {
            "promotion_id": promotion_id, "target_file": str(path), "backup_path": backup,
            "sha256_before": hashlib.sha256(before).hexdigest() if before is not None else None,
            "sha256_restored": hashlib.sha256(restored).hexdigest() if backup is not None else None,
            "removed": backup is None, "reason": why}, actor, now=now)
        problem = run_reload(runner.reload_command)
        append_event(s, KIND_RELOAD, promo["subsystem"], {
            "promotion_id": promotion_id, "command": list(runner.reload_command) if runner.reload_command else None,
            "ok": problem is None, "problem": problem, "for": "rollback"}, actor, now=now)
        text = why + (f"; the old file is back but {problem}" if problem else "")
        result = tq.set_promotion_status(s, promotion_id, "rolled_back", actor=actor, reason=text, now=now,
                                         detail={"automatic": automatic, "reload_problem": problem,
                                                 "evidence": tq.audit_safe(dict(evidence)) if evidence else None})
        tq.finish_watch(s, promotion_id, "rolled_back", reason=text, actor=actor, now=now)
        alert_id = None
        if automatic or problem:
            alert = queries.record_alert(
                s, kind="tuning_rollback", severity="critical", subject=f"{promo['subsystem']}: promotion {promotion_id}",
                reason="watch_failed" if automatic else "reload_failed",
                message=f"promotion {promotion_id} ({_values_text(promo['new_values'])}) rolled back: {text}",
                webhook=settings.healing.notification.enabled, actor=actor, now=now)
            alert_id = int(alert["id"])
        result["rollback"] = {"restored": str(path), "backup_path": backup, "reload_problem": problem, "alert_id": alert_id}
        return result


def _values_text(values: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in (values or {}).items())
