"""The Settings page's table: the effective configuration flattened into (Section, Setting, Value) rows.

Sources: ``Settings.masked()`` (typed sections, secrets as ``***``), the raw sections other subsystems
validate themselves (``tuning`` …, masked with healing.config.mask_secrets) and the dashboard's own
settings. Every value then goes through healing.redaction's redactor (dashboard.safe.value), so a
secret under a harmless key (a token inside a URL, a password in a command line) is masked too.
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from dashboard.safe import value
from healing.config import Settings, mask_secrets


def _cell(item: Any) -> str:
    if item is None:
        return "—"
    if isinstance(item, bool):
        return "yes" if item else "no"
    if isinstance(item, list | tuple):
        if all(not isinstance(v, dict | list) for v in item):
            return ", ".join(str(v) for v in item) if item else "—"
        return json.dumps(item, sort_keys=True, default=str)
    return str(item)


def _plain(item: Any) -> Any:
    """Dataclasses, paths, decimals and tuples as plain JSON-like data."""
    if is_dataclass(item) and not isinstance(item, type):
        return {f.name: _plain(getattr(item, f.name)) for f in fields(item)}
    if isinstance(item, dict):
        return {str(k): _plain(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return [_plain(v) for v in item]
    if isinstance(item, Path | Decimal):
        return str(item)
    return item


def _flatten(prefix: str, item: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(item, dict) and item:
        for key in sorted(item, key=str):
            _flatten(f"{prefix}.{key}" if prefix else str(key), item[key], out)
    else:
        out.append((prefix, "—" if item == {} else _cell(item)))


_SECRET_NAMES = ("token", "secret", "password", "passwd", "authorization", "credential", "api_key", "apikey")


def _mask(item: Any) -> Any:
    """mask_secrets for the sections other subsystems validate: a bare ``key`` there names a metric
    (tuning.scoring.metrics.*.key), so only secret-looking names and ``*_key`` are masked here; the
    redactor (configured secrets, URLs) still runs over every value afterwards."""
    if isinstance(item, dict):
        return {k: "***" if (any(w in str(k).lower() for w in _SECRET_NAMES) or str(k).lower().endswith("_key"))
                and v not in (None, "", [], {}) else _mask(v) for k, v in item.items()}
    if isinstance(item, list):
        return [_mask(v) for v in item]
    return item


def tuning_section(settings: Settings) -> dict[str, Any]:
    """The effective tuning settings (defaults filled in by the tuning package's own parser), secrets masked;
    the raw section with a note when it does not validate."""
    from healing.errors import ConfigError
    from healing.tuning.runner_config import parse_runner_settings

    raw = dict(settings.section("tuning") or {})
    try:
        runner = parse_runner_settings(raw)
    except ConfigError as exc:
        return {**_mask(_plain(raw)), "(invalid)": str(exc)}
    effective = _plain(runner)
    effective["rate_limits"] = _plain(runner.limits())
    extra = {k: v for k, v in raw.items() if k not in effective}  # keys parsed by other parts (mode, actuators …)
    return _mask({**_plain(extra), **effective})


def settings_rows(settings: Settings, dashboard: dict[str, Any]) -> list[dict[str, str]]:
    """One row per leaf setting, grouped by top-level section, sections and settings sorted."""
    typed = settings.masked()
    general = {k: v for k, v in typed.items() if not isinstance(v, dict)}
    sections: dict[str, Any] = {"general": general}
    sections.update({k: v for k, v in typed.items() if isinstance(v, dict)})
    sections["tuning"] = tuning_section(settings)
    for name, raw in (settings.raw or {}).items():
        if name not in sections and isinstance(raw, dict):  # validated by their own subsystem
            sections[name] = _mask(_plain(raw))
    sections["dashboard"] = {**mask_secrets(dict(settings.section("dashboard") or {})), **dashboard}
    result = []
    for section in sorted(sections, key=lambda s: (s != "general", s)):
        leaves: list[tuple[str, str]] = []
        _flatten("", value(sections[section]), leaves)
        result.extend({"Section": section, "Setting": key, "Value": cell} for key, cell in leaves)
    return result
