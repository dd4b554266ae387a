"""Validation of the whole configuration: a pydantic schema for the sections healing.config builds,
the subsystems' own parsers for theirs, and the same rules for the file and the environment.

- Every key is known: a misspelled one is an error naming it, with the nearest known key
  (``difflib``), e.g. ``config: unknown key health_check.cache_tl (did you mean health_check.cache_ttl?)``.
- Environment variables that set a key (``VLM_*``, ``SELFHEAL_*``, table ``ENV_KEYS``) are checked
  by the same schema as the file; an error names the variable and the key it sets. A ``VLM_*`` or
  ``SELFHEAL_*`` variable that is not known but is close to a known name is reported as a misspelling.
- Sections parsed by their own subsystem are validated by that parser, never duplicated here:
  ``tuning`` (healing.tuning.actuators.parse_tuning_section and
  healing.tuning.runner_config.parse_runner_settings), ``api`` (healing.api.settings), ``dashboard``
  (dashboard.config), ``worker`` (healing.worker.WorkerSettings), ``database``
  (storage.engine), ``audit`` (storage.audit), ``storage`` (storage.retention). For the parsers that do not reject unknown keys,
  the known keys are the fields of their settings dataclass.
- All problems are reported together, one line each (:class:`ConfigValidationError`).

``load_settings`` runs the schema (:func:`schema_lines`, cached per file content and environment);
the subsystems' parsers run in :func:`healing.config.validate_configuration`, which the CLI calls
before every command, so a library user who never touches tuning does not import it.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from healing.errors import ConfigError

if TYPE_CHECKING:
    from healing.config import Settings

# Environment variable → the key it sets (dotted path). Values are validated like the file's.
ENV_KEYS: dict[str, str] = {
    "VLM_MODEL_PROVIDER": "vision_model.provider",
    "VLM_MODEL_ENDPOINT": "vision_model.endpoint",
    "VLM_MODEL_NAME": "vision_model.model",
    "VLM_CHECK_INTERVAL": "health_check.interval",
    "VLM_WARNING_THRESHOLD": "health_check.threshold.warning",
    "VLM_CRITICAL_THRESHOLD": "health_check.threshold.critical",
    "VLM_AUTO_HEAL": "health_check.auto_heal",
    "VLM_BACKUP_BEFORE_HEAL": "healing.backup_before_heal",
    "VLM_MAX_HEAL_ATTEMPTS": "healing.max_heal_attempts",
    "SELFHEAL_MAX_PIXELS": "pixelrts.max_pixels",
}
# Variables of the same families that are not configuration keys (still known: never "misspelled").
OTHER_ENV_NAMES = (
    "SELFHEAL_HOME", "SELFHEAL_DATABASE_URL", "SELFHEAL_CONFIG", "SELFHEAL_MODE", "KLR_SELF_HEALING_MODE", "SELFHEAL_DB_BUSY_TIMEOUT_MS",
    "SELFHEAL_AUDIT_KEY_FILE", "SELFHEAL_AUDIT_CHECKPOINT_FILE", "SELFHEAL_DEBUG", "SELFHEAL_DASHBOARD_PASSWORD",
    "SELFHEAL_DASHBOARD_AUTH", "SELFHEAL_DASHBOARD_PORT", "SELFHEAL_API_PORT", "SELFHEAL_TEST_POSTGRES_URL",
    "SELFHEAL_BENCH_QUICK", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
    "VLM_API_KEY", "VLM_LIVE_PROVIDER", "VLM_LIVE_ENDPOINT", "VLM_LIVE_MODEL",
)
ENV_PREFIXES = ("VLM_", "SELFHEAL_")
ENV_TYPO_CUTOFF = 0.88  # closer than this to a known name: a misspelling, not another tool's variable
KEY_TYPO_CUTOFF = 0.6

# Sections validated by their subsystem's parser (see the module docstring).
DELEGATED_SECTIONS = ("tuning", "api", "dashboard", "worker", "database", "audit", "storage")


class ConfigValidationError(ConfigError):
    """Several configuration problems; ``lines`` holds one line per problem (the CLI prints each)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


# --------------------------------------------------------------------------- the schema

def _models() -> dict[str, Any]:
    """The pydantic models, built on first use (pydantic costs an import the CLI's --help must not pay)."""
    cached = _MODELS.get("root")
    if cached is not None:
        return _MODELS
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    strict = ConfigDict(extra="forbid")
    Str = str | int | float  # YAML may read a model name such as 3 as a number; the loader makes it a string
    NonNeg = Annotated[float, Field(ge=0)]

    class VisionModel(BaseModel):
        model_config = strict
        provider: Str = "statistical"
        endpoint: str | None = None
        model: Str | None = None
        timeout: float = Field(30.0, ge=0.1, le=3600)
        max_retries: int = Field(3, ge=0, le=20)
        api_key: str | None = None
        max_size: int = Field(512, ge=16, le=4096)
        weights: dict[str, NonNeg] | None = None
        upload_allowlist: list[str] = ["statistical"]

    class Threshold(BaseModel):
        model_config = strict
        warning: float = Field(0.7, ge=0, le=1)
        critical: float = Field(0.9, ge=0, le=1)

    class HealthCheck(BaseModel):
        model_config = strict
        interval: int = Field(300, ge=1)
        threshold: Threshold | None = None
        auto_heal: bool = False
        block_size: int = Field(4096, ge=64, le=1 << 24)
        timeout_s: float = Field(60.0, ge=0.1, le=86400)
        cache_results: bool = False
        cache_ttl: float = Field(600.0, ge=0, le=86400 * 7)

    class MonitoredImage(BaseModel):
        model_config = strict
        path: Str
        critical: bool = False
        check_interval: int | None = Field(None, ge=1)

    class Monitoring(BaseModel):
        model_config = strict
        images: list[MonitoredImage] | None = None

    class Notification(BaseModel):
        model_config = strict
        enabled: bool | None = None
        webhook: str | None = None
        timeout: float = Field(5.0, ge=0.1, le=120)
        retries: int = Field(3, ge=0, le=10)

    class Healing(BaseModel):
        model_config = strict
        backup_before_heal: bool = True
        max_heal_attempts: int = Field(3, ge=1, le=100)
        quarantine_corrupted: bool = True
        quarantine_retention_days: float = Field(30.0, ge=0, le=36500)
        revert_unexpected_changes: bool = False
        parity_percent: float = Field(2.0, ge=0, le=100)
        actions: list[str] | None = None
        notification: Notification | None = None

    class Logging(BaseModel):
        model_config = strict
        level: str = "INFO"
        file: str | None = None
        format: str = "%(asctime)s [%(levelname)s] %(message)s"

    class PixelRTS(BaseModel):
        model_config = strict
        max_pixels: int = Field(8192 * 8192, ge=1)
        compression_level: int = Field(6, ge=0, le=9)
        max_metadata_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)

    Section = dict[str, Any] | None

    class Root(BaseModel):
        model_config = strict
        home: str | None = None
        database_url: str | None = None
        vision_model: VisionModel | None = None
        health_check: HealthCheck | None = None
        monitoring: Monitoring | None = None
        healing: Healing | None = None
        logging: Logging | None = None
        pixelrts: PixelRTS | None = None
        tuning: Section = None
        api: Section = None
        dashboard: Section = None
        worker: Section = None
        database: Section = None
        audit: Section = None
        storage: Section = None  # storage.retention: storage.retention.RetentionSettings

    _MODELS.update(root=Root)
    return _MODELS


_MODELS: dict[str, Any] = {}


def _known_keys(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``loc`` (list indexes skipped)."""
    import typing

    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        candidates = [a for a in (typing.get_args(field.annotation) or (field.annotation,)) if hasattr(a, "model_fields")]
        if not candidates:  # a list of models: look inside
            for arg in typing.get_args(field.annotation):
                candidates += [a for a in typing.get_args(arg) if hasattr(a, "model_fields")]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def unknown_key_line(dotted: str, known: list[str]) -> str:
    """``config: unknown key a.b (did you mean a.c?)`` — or the list of known keys when none is close."""
    parent, _, name = dotted.rpartition(".")
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(name, known, n=1, cutoff=KEY_TYPO_CUTOFF)
    if close:
        return f"config: unknown key {dotted} (did you mean {prefix}{close[0]}?)"
    return f"config: unknown key {dotted} (known keys{' of ' + parent if parent else ''}: {', '.join(sorted(known))})"


_TYPE_WORDS = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _error_line(error: Mapping[str, Any], origins: Mapping[str, str], root: Any) -> str | None:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("str", "int", "float", "function-after")))
    # Unions report once per member ("int", "str", "MonitoredImage"...): keep the path only.
    loc = tuple(p for p in loc if isinstance(p, int) or not p[:1].isupper())
    dotted = _dotted(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return unknown_key_line(dotted, _known_keys(root, loc[:-1]))
    label = f"{origins[dotted]} ({dotted})" if dotted in origins else dotted
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = ctx.get("ge", ctx.get("le"))
        return f"config: {label} must be {'≥' if kind == 'greater_than_equal' else '≤'} {_number(bound)}, got {_as_kind(value, bound)}"
    if kind == "missing":
        return f"config: {label} is required"
    words = _TYPE_WORDS.get(kind)
    if words is not None:
        return f"config: {label} must be {words}, got {value!r}"
    return f"config: {label}: {' '.join(str(error.get('msg', kind)).split())}"


def _number(bound: Any) -> Any:
    """A bound as the code states it: 0 rather than 0.0, 16777216 rather than 1.67772e+07."""
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound


def _as_kind(value: Any, bound: Any) -> Any:
    """The offending value converted to the field's kind (the bound's type), as healing.config prints it."""
    try:
        return float(value) if isinstance(bound, float) else int(value)
    except (TypeError, ValueError):
        return repr(value)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def effective_document(raw: Mapping[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's mapping with the environment's values laid over it, and key → variable for those."""
    import copy

    data = copy.deepcopy(dict(raw))
    origins: dict[str, str] = {}
    for name, dotted in ENV_KEYS.items():
        value = env.get(name)
        if value:  # an empty variable is unset, as everywhere in selfheal
            # Sections that are not mappings are reported by the schema as they are in the file.
            head = dotted.split(".")[0]
            if head in data and data[head] is not None and not isinstance(data[head], dict):
                continue
            _set_path(data, dotted, value)
            origins[dotted] = name
    return data, origins


def env_typo_lines(env: Mapping[str, str]) -> list[str]:
    """Unknown ``VLM_*``/``SELFHEAL_*`` variables that are near a known name (misspellings)."""
    known = [*ENV_KEYS, *OTHER_ENV_NAMES]
    lines = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIXES) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=ENV_TYPO_CUTOFF)
        if close:
            lines.append(f"config: unknown environment variable {name} (did you mean {close[0]}?)")
    return lines


def schema_lines(raw: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """Every problem the schema finds in the file + environment, one line each (empty when valid)."""
    data, origins = effective_document(raw, env)
    lines = env_typo_lines(env)
    if not data:
        return lines  # defaults only: valid by construction, and building the schema costs ~0.1 s
    from pydantic import ValidationError

    root = _models()["root"]
    try:
        root.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            line = _error_line(error, origins, root)
            if line and line not in lines:
                lines.append(line)
    for section in ("worker", "dashboard", "database", "audit", "storage"):
        value = data.get(section)
        if isinstance(value, dict):
            known = _delegated_keys(section)
            for key in value:
                if str(key) not in known:
                    lines.append(unknown_key_line(f"{section}.{key}", known))
    return lines


# --------------------------------------------------------------------------- delegated sections

def _dataclass_keys(cls: type) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)]


def _delegated_keys(section: str) -> list[str]:
    """Known keys of a delegated section whose parser does not reject unknown keys itself."""
    if section == "worker":
        from healing.worker import WorkerSettings

        return _dataclass_keys(WorkerSettings)
    if section == "dashboard":
        from dashboard.config import DashboardSettings

        return _dataclass_keys(DashboardSettings)
    if section == "database":
        return ["busy_timeout_ms"]
    if section == "storage":
        return ["retention"]  # its keys: storage.retention.RetentionSettings (checked by its parser)
    return ["key_file", "checkpoint_file"]  # audit (storage.audit.audit_paths)


# The top-level keys of ``tuning`` (its sub-sections check their own keys): what parse_tuning_section and
# parse_runner_settings read, plus ``mode`` (read by healing.config). A test keeps this in step with them.
TUNING_KEYS = ("mode", "actuators", "observer", "max_params_per_candidate", "log_sources", "target_config",
               "reload_command", "promotion_ttl_s", "interval_s", "stale_after_s", "intents_per_call", "rate_limits",
               "candidates", "gpu_profile", "preflight", "canary", "scoring", "verify_window_s", "watch")


def _delegated_parsers() -> list[tuple[str, Callable[[Settings], Any]]]:
    def tuning(s: Settings) -> Any:
        from healing.tuning.actuators import parse_tuning_section
        from healing.tuning.runner_config import parse_runner_settings

        section = s.section("tuning") or {}
        for key in map(str, section):
            if key not in TUNING_KEYS:
                raise ConfigError(unknown_key_line(f"tuning.{key}", list(TUNING_KEYS)))
        parse_tuning_section(section)
        return parse_runner_settings(section)

    def api(s: Settings) -> Any:
        try:
            from healing.api.settings import api_settings
        except ImportError:  # a build without the REST API: its section is not read by anything
            return None
        return api_settings(s)

    def dashboard(s: Settings) -> Any:
        from dashboard.config import dashboard_settings

        return dashboard_settings(s)

    def worker(s: Settings) -> Any:
        from healing.worker import WorkerSettings

        return WorkerSettings.from_settings(s)

    def database(s: Settings) -> Any:
        from storage.engine import busy_timeout_ms_from_settings

        return busy_timeout_ms_from_settings(s)

    def audit(s: Settings) -> Any:
        for option in ("key_file", "checkpoint_file"):
            value = s.section("audit").get(option)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"config: audit.{option} must be a path, got {value!r}")

    def storage(s: Settings) -> Any:
        from storage.retention import RetentionSettings

        return RetentionSettings.from_settings(s)

    return [("tuning", tuning), ("api", api), ("dashboard", dashboard), ("worker", worker),
            ("database", database), ("audit", audit), ("storage", storage)]


def delegated_lines(settings: Settings) -> list[str]:
    """The first problem each subsystem's parser reports for its section (one line per section present)."""
    lines = []
    for name, parse in _delegated_parsers():
        if not settings.raw.get(name) and not (name == "database" and os.environ.get("SELFHEAL_DB_BUSY_TIMEOUT_MS")):
            continue  # absent: the subsystem's defaults, valid by construction (and its modules stay unloaded)
        try:
            parse(settings)
        except ConfigError as exc:
            lines.extend(getattr(exc, "lines", None) or [str(exc)])
    return lines


_validated: set[str] = set()


def validation_stamp(raw: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """What a validation depends on: the file's content and the variables of selfheal's families."""
    relevant = {k: v for k, v in env.items() if k.startswith((*ENV_PREFIXES, "KLR_", "OPENAI_", "ANTHROPIC_"))}
    return json.dumps([raw, relevant], sort_keys=True, default=repr)


def remember_valid(stamp: str) -> None:
    if len(_validated) > 64:  # a long-running process that sees many configs: start over
        _validated.clear()
    _validated.add(stamp)


def known_valid(stamp: str) -> bool:
    return stamp in _validated
