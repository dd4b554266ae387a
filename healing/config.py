"""One settings object, built from the YAML config file and environment variables.

Precedence (highest first): environment variables, the YAML file named by ``--config`` /
``SELFHEAL_CONFIG``, built-in defaults. The whole configuration is validated at load
(healing.config_schema: a pydantic schema, the same rules for the file and the environment): an unknown
key is named with the nearest known one, and every problem is reported in one line of a
:class:`ConfigError`. :func:`validate_configuration` adds the values of the sections other subsystems
parse, by their parsers (the CLI runs it before every command).

Sections follow the image guide's YAML (``vision_model``, ``health_check``, ``monitoring``,
``healing``, ``logging``) plus ``pixelrts``, ``tuning`` and ``dashboard``. Sections that a
subsystem validates itself (``tuning``) stay available as plain dicts in ``Settings.raw``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.errors import ConfigError

MODES = ("dev", "prod", "disabled")


@dataclass
class VisionModelSettings:
    provider: str = "statistical"
    endpoint: str | None = None
    model: str | None = None
    timeout: float = 30.0
    max_retries: int = 3
    api_key: str | None = None  # never printed; see Settings.masked()
    max_size: int = 512
    weights: dict[str, float] = field(default_factory=dict)
    upload_allowlist: list[str] = field(default_factory=lambda: ["statistical"])


@dataclass
class HealthCheckSettings:
    interval: int = 300
    warning_threshold: float = 0.7
    critical_threshold: float = 0.9
    auto_heal: bool = False
    block_size: int = 4096
    timeout_s: float = 60.0  # a check running longer is recorded unknown (with an alert) and not waited for
    cache_results: bool = False  # the guide's cache: a checker reuses a result while the file is unchanged ...
    cache_ttl: float = 600.0  # ... for at most this many seconds


@dataclass
class MonitoredImage:
    path: str
    critical: bool = False
    check_interval: int | None = None


@dataclass
class NotificationSettings:
    enabled: bool = False
    webhook: str | None = None
    timeout: float = 5.0
    retries: int = 3


@dataclass
class HealingSettings:
    backup_before_heal: bool = True
    max_heal_attempts: int = 3
    quarantine_corrupted: bool = True
    quarantine_retention_days: float = 30.0  # the worker prunes older copies; 0 keeps them forever
    revert_unexpected_changes: bool = False
    parity_percent: float = 2.0  # erasure-coded parity made at register, % of the file; 0 turns it off
    actions: list[str] = field(default_factory=list)
    notification: NotificationSettings = field(default_factory=NotificationSettings)


@dataclass
class LoggingSettings:
    level: str = "INFO"
    file: str | None = None
    format: str = "%(asctime)s [%(levelname)s] %(message)s"


@dataclass
class PixelRTSSettings:
    max_pixels: int = 8192 * 8192  # refuse larger declared dimensions before allocating anything
    compression_level: int = 6
    max_metadata_bytes: int = 1 << 20  # text chunks (decompressed) and sidecars; more is a structural finding


@dataclass
class Settings:
    home: Path
    database_url: str
    mode: str = "prod"
    vision_model: VisionModelSettings = field(default_factory=VisionModelSettings)
    health_check: HealthCheckSettings = field(default_factory=HealthCheckSettings)
    monitored_images: list[MonitoredImage] = field(default_factory=list)
    healing: HealingSettings = field(default_factory=HealingSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    pixelrts: PixelRTSSettings = field(default_factory=PixelRTSSettings)
    config_path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """The raw YAML of a section validated by its own subsystem (e.g. ``tuning``)."""
        value = self.raw.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"config: '{name}' must be a mapping, got {type(value).__name__}")
        return value

    @property
    def golden_dir(self) -> Path:
        return self.home / "golden"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data with every secret replaced by '***'."""
        from dataclasses import asdict

        data = asdict(self)
        data["home"] = str(self.home)
        data["config_path"] = str(self.config_path) if self.config_path else None
        data["database_url"] = mask_url(self.database_url)
        # A webhook's ?token= or an endpoint's ?key= is a credential under a harmless-looking key.
        endpoint, webhook = self.vision_model.endpoint, self.healing.notification.webhook
        data["vision_model"]["endpoint"] = mask_url(endpoint) if endpoint else None
        data["healing"]["notification"]["webhook"] = mask_url(webhook) if webhook else None
        data.pop("raw", None)
        return mask_secrets(data)


SECRET_WORDS = ("key", "token", "secret", "password", "authorization")


def mask_secrets(value: Any) -> Any:
    """Recursively replace values of secret-looking keys with '***'."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if any(word in str(k).lower() for word in SECRET_WORDS) and v not in (None, "", [], {}):
                out[k] = "***"
            else:
                out[k] = mask_secrets(v)
        return out
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def mask_url(url: str) -> str:
    """A URL with its credentials hidden: the userinfo password and every query value become '***'.

    postgresql://user:pw@host/db → postgresql://user:***@host/db;
    https://hooks.example/h?token=abc&x=1 → https://hooks.example/h?token=***&x=***.
    Every query value, not only token-looking ones: webhook and API URLs name their credential in
    many ways (token, key, sig, code, auth …). The one place URLs are masked for display.
    """
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    rest, hash_mark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    if "@" in rest:  # the last @ ends the userinfo, even when the password holds an unencoded / or @
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        rest = f"{creds}@{host}"
    if query:
        query = "&".join(part.split("=", 1)[0] + "=***" if "=" in part else part for part in query.split("&"))
    if fragment:
        fragment = "***"
    return f"{scheme}://{rest}{question}{query}{hash_mark}{fragment}"


# --------------------------------------------------------------------------- parsing helpers

def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"config: {key} must be true or false, got {value!r}")


def _as_number(key: str, value: Any, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"config: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if lo is not None and number < lo:
        raise ConfigError(f"config: {key} must be ≥ {lo}, got {number}")
    if hi is not None and number > hi:
        raise ConfigError(f"config: {key} must be ≤ {hi}, got {number}")
    return number


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config: '{key}' must be a mapping, got {type(value).__name__}")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(f"config: {key} must be a string, got {value!r}")
    return str(value)


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return data


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build the settings from defaults, the YAML file and the environment (``env`` defaults to os.environ)."""
    env = dict(os.environ if env is None else env)
    config_path = Path(path) if path else (Path(env["SELFHEAL_CONFIG"]) if env.get("SELFHEAL_CONFIG") else None)
    raw = read_yaml(config_path) if config_path else {}
    from healing.config_schema import (
        ConfigValidationError,
        known_valid,
        remember_valid,
        schema_lines,
        validation_stamp,
    )

    stamp = validation_stamp(raw, env)
    if not known_valid(stamp):
        problems = schema_lines(raw, env)
        if problems:
            raise ConfigValidationError(problems)
        remember_valid(stamp)

    home = Path(env.get("SELFHEAL_HOME") or raw.get("home") or Path.home() / ".selfheal").expanduser()
    database_url = env.get("SELFHEAL_DATABASE_URL") or raw.get("database_url") or f"sqlite:///{home / 'selfheal.db'}"

    mode = env.get("SELFHEAL_MODE") or env.get("KLR_SELF_HEALING_MODE") or _mapping("tuning", raw.get("tuning")).get("mode") or "prod"
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise ConfigError(f"config: mode must be one of {', '.join(MODES)}, got {mode!r}")

    s = Settings(home=home, database_url=database_url, mode=mode, config_path=config_path, raw=raw)

    vm = _mapping("vision_model", raw.get("vision_model"))
    v = s.vision_model
    v.provider = _str("vision_model.provider", env.get("VLM_MODEL_PROVIDER") or vm.get("provider", v.provider)).lower()
    v.endpoint = env.get("VLM_MODEL_ENDPOINT") or vm.get("endpoint") or None
    v.model = env.get("VLM_MODEL_NAME") or vm.get("model") or None
    v.timeout = _as_number("vision_model.timeout", vm.get("timeout", v.timeout), float, 0.1, 3600)
    v.max_retries = _as_number("vision_model.max_retries", vm.get("max_retries", v.max_retries), int, 0, 20)
    v.api_key = vm.get("api_key") or None
    v.max_size = _as_number("vision_model.max_size", vm.get("max_size", v.max_size), int, 16, 4096)
    weights = _mapping("vision_model.weights", vm.get("weights"))
    v.weights = {str(k): _as_number(f"vision_model.weights.{k}", w, float, 0) for k, w in weights.items()}
    allow = vm.get("upload_allowlist", v.upload_allowlist)
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ConfigError("config: vision_model.upload_allowlist must be a list of provider names")
    v.upload_allowlist = [a.lower() for a in allow]

    hc = _mapping("health_check", raw.get("health_check"))
    h = s.health_check
    h.interval = _as_number("health_check.interval", env.get("VLM_CHECK_INTERVAL") or hc.get("interval", h.interval), int, 1)
    thr = _mapping("health_check.threshold", hc.get("threshold"))
    h.warning_threshold = _as_number(
        "health_check.threshold.warning", env.get("VLM_WARNING_THRESHOLD") or thr.get("warning", h.warning_threshold), float, 0, 1
    )
    h.critical_threshold = _as_number(
        "health_check.threshold.critical", env.get("VLM_CRITICAL_THRESHOLD") or thr.get("critical", h.critical_threshold), float, 0, 1
    )
    if h.warning_threshold > h.critical_threshold:
        raise ConfigError("config: health_check.threshold.warning must not exceed health_check.threshold.critical")
    h.auto_heal = _as_bool("health_check.auto_heal", env["VLM_AUTO_HEAL"] if "VLM_AUTO_HEAL" in env else hc.get("auto_heal", h.auto_heal))
    h.block_size = _as_number("health_check.block_size", hc.get("block_size", h.block_size), int, 64, 1 << 24)
    h.timeout_s = _as_number("health_check.timeout_s", hc.get("timeout_s", h.timeout_s), float, 0.1, 86400)
    h.cache_results = _as_bool("health_check.cache_results", hc.get("cache_results", h.cache_results))
    h.cache_ttl = _as_number("health_check.cache_ttl", hc.get("cache_ttl", h.cache_ttl), float, 0, 86400 * 7)

    mon = _mapping("monitoring", raw.get("monitoring"))
    images = mon.get("images") or []
    if not isinstance(images, list):
        raise ConfigError("config: monitoring.images must be a list")
    for i, item in enumerate(images):
        item = _mapping(f"monitoring.images[{i}]", item)
        if "path" not in item:
            raise ConfigError(f"config: monitoring.images[{i}] needs a 'path'")
        interval = item.get("check_interval")
        s.monitored_images.append(
            MonitoredImage(
                path=_str(f"monitoring.images[{i}].path", item["path"]),
                critical=_as_bool(f"monitoring.images[{i}].critical", item.get("critical", False)),
                check_interval=None if interval is None else _as_number(f"monitoring.images[{i}].check_interval", interval, int, 1),
            )
        )

    he = _mapping("healing", raw.get("healing"))
    g = s.healing
    g.backup_before_heal = _as_bool(
        "healing.backup_before_heal", env["VLM_BACKUP_BEFORE_HEAL"] if "VLM_BACKUP_BEFORE_HEAL" in env else he.get("backup_before_heal", True)
    )
    g.max_heal_attempts = _as_number(
        "healing.max_heal_attempts", env.get("VLM_MAX_HEAL_ATTEMPTS") or he.get("max_heal_attempts", g.max_heal_attempts), int, 1, 100
    )
    g.quarantine_corrupted = _as_bool("healing.quarantine_corrupted", he.get("quarantine_corrupted", True))
    g.quarantine_retention_days = _as_number(
        "healing.quarantine_retention_days", he.get("quarantine_retention_days", g.quarantine_retention_days), float, 0, 36500
    )
    g.revert_unexpected_changes = _as_bool("healing.revert_unexpected_changes", he.get("revert_unexpected_changes", False))
    g.parity_percent = _as_number("healing.parity_percent", he.get("parity_percent", g.parity_percent), float, 0, 100)
    actions = he.get("actions") or []
    if not isinstance(actions, list) or not all(isinstance(a, str) and ":" in a for a in actions):
        raise ConfigError("config: healing.actions must be a list of 'module:function' names")
    g.actions = actions
    nt = _mapping("healing.notification", he.get("notification"))
    g.notification.enabled = _as_bool("healing.notification.enabled", nt.get("enabled", bool(nt.get("webhook"))))
    g.notification.webhook = nt.get("webhook") or None
    if g.notification.webhook and not str(g.notification.webhook).startswith(("http://", "https://")):
        raise ConfigError(f"config: healing.notification.webhook must be an http(s) URL, got {g.notification.webhook!r}")
    g.notification.timeout = _as_number("healing.notification.timeout", nt.get("timeout", 5.0), float, 0.1, 120)
    g.notification.retries = _as_number("healing.notification.retries", nt.get("retries", 3), int, 0, 10)

    lg = _mapping("logging", raw.get("logging"))
    level = _str("logging.level", lg.get("level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"config: logging.level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    s.logging = LoggingSettings(level=level, file=lg.get("file") or None, format=_str("logging.format", lg.get("format", LoggingSettings.format)))

    px = _mapping("pixelrts", raw.get("pixelrts"))
    s.pixelrts.max_pixels = _as_number(
        "pixelrts.max_pixels", env.get("SELFHEAL_MAX_PIXELS") or px.get("max_pixels", s.pixelrts.max_pixels), int, 1
    )
    s.pixelrts.compression_level = _as_number("pixelrts.compression_level", px.get("compression_level", 6), int, 0, 9)
    s.pixelrts.max_metadata_bytes = _as_number(
        "pixelrts.max_metadata_bytes", px.get("max_metadata_bytes", s.pixelrts.max_metadata_bytes), int, 1024, 1 << 30
    )
    return s


def validate_configuration(settings: Settings) -> None:
    """Also the values of the sections other subsystems parse (tuning, api, dashboard, worker, database,
    audit), by their own parsers; every problem one line of a ConfigError. The CLI calls this before any
    command runs; ``load_settings`` alone checks the schema (every key known, the values of its sections)."""
    from healing.config_schema import ConfigValidationError, delegated_lines

    problems = delegated_lines(settings)
    if problems:
        raise ConfigValidationError(problems)
