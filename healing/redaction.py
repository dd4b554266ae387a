"""One place that knows every configured secret and removes it from text that leaves the process.

A secret is removed wherever it appears — case-insensitively and as a substring — together with its
URL-encoded and base64 forms: a provider that echoes the key in upper case, a model answer that
quotes it, a traceback that prints a URL with it all come out with ``***`` instead.

Secrets are collected (:func:`configured_secrets`) from the settings and the environment:
  * ``vision_model.api_key`` and any other string under a secret-looking key anywhere in the YAML
    (``key``, ``token``, ``secret``, ``password``, ``authorization`` — the words of ``mask_secrets``);
  * the password of the database URL and of the webhook URL, and every query value of the webhook URL
    (a ``?token=`` or ``?sig=`` is the credential of a webhook);
  * environment variables with a secret-looking name under our prefixes (``VLM_*``, ``SELFHEAL_*``,
    ``OPENAI_*``, ``ANTHROPIC_*``, ``KLR_*``), e.g. ``SELFHEAL_DASHBOARD_PASSWORD``, ``OPENAI_API_KEY``;
  * extra values a caller adds (the dashboard adds its OIDC ``client_secret`` and ``cookie_secret``).

Where it is applied: vision provider errors and answers (before they are stored or shown), the CLI's
error line, every log record (:func:`install_log_redaction`), and every string the dashboard draws.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from healing.config import SECRET_WORDS, Settings

MASK = "***"
# Shorter values are not treated as secrets: masking every "abc" in every text would destroy the text
# and a 3-character secret protects nothing anyway.
MIN_SECRET_LEN = 4
ENV_PREFIXES = ("VLM_", "SELFHEAL_", "OPENAI_", "ANTHROPIC_", "KLR_")
ENV_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
URL_ENV_VARS = ("SELFHEAL_DATABASE_URL", "VLM_MODEL_ENDPOINT")
# A name like SELFHEAL_AUDIT_KEY_FILE or audit.key_file says where a secret lives; its value is a path.
LOCATION_SUFFIXES = ("_FILE", "_PATH", "_DIR")


def _variants(secret: str) -> set[str]:
    """The forms in which ``secret`` may turn up in text: as is, URL-encoded, base64 (std and URL-safe)."""
    raw = secret.encode("utf-8")
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        forms.add(encoded.decode("ascii").rstrip("="))
    return {form for form in forms if len(form) >= MIN_SECRET_LEN}


@dataclass(frozen=True)
class Redactor:
    """Replaces every form of every secret with ``***`` (case-insensitive, substring)."""

    secrets: frozenset[str] = frozenset()
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        forms = sorted({v for s in self.secrets if s and len(s) >= MIN_SECRET_LEN for v in _variants(s)},
                       key=len, reverse=True)  # longest first, so a secret's encoded form is not cut in half
        pattern = re.compile("|".join(re.escape(f) for f in forms), re.IGNORECASE) if forms else None
        object.__setattr__(self, "_pattern", pattern)

    def __repr__(self) -> str:  # the secrets themselves never appear in a repr
        return f"Redactor({len(self.secrets)} secrets)"

    def with_secrets(self, extra: Iterable[str | None]) -> Redactor:
        return Redactor(self.secrets | {s for s in extra if s and len(s) >= MIN_SECRET_LEN})

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string in it (keys too) redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {self.value(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def url_secrets(url: str | None) -> list[str]:
    """The credentials inside a URL: the userinfo password and every query value."""
    if not url or "://" not in url:
        return []
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed port or netloc: nothing reliable to extract
        return []
    found = [unquote(password)] if password else []
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=False)]
    return found


def _secret_leaves(value: Any, secret_key: bool = False) -> Iterable[str]:
    """Strings stored under a secret-looking key anywhere in a YAML tree."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            name = str(k).lower()
            if name.upper().endswith(LOCATION_SUFFIXES):
                continue
            yield from _secret_leaves(v, secret_key or any(w in name for w in SECRET_WORDS))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _secret_leaves(v, secret_key)
    elif secret_key and isinstance(value, str | int) and not isinstance(value, bool):
        yield str(value)


def configured_secrets(settings: Settings | None, env: Mapping[str, str] | None = None) -> set[str]:
    """Every secret the settings and the environment hold (see the module docstring)."""
    env = os.environ if env is None else env
    found: set[str] = set()
    if settings is not None:
        found.add(settings.vision_model.api_key or "")
        found.update(_secret_leaves(settings.raw))
        found.update(url_secrets(settings.database_url))
        found.update(url_secrets(settings.healing.notification.webhook))
        found.update(url_secrets(settings.vision_model.endpoint))
    for name, value in env.items():
        upper = name.upper()
        if (upper.startswith(ENV_PREFIXES) and any(word in upper for word in ENV_SECRET_WORDS)
                and not upper.endswith(LOCATION_SUFFIXES)):
            found.add(value)
    for name in URL_ENV_VARS:
        found.update(url_secrets(env.get(name)))
    return {s for s in found if s and len(s) >= MIN_SECRET_LEN}


_cache_lock = threading.Lock()
_cache: tuple[tuple[Any, ...], Redactor] | None = None
# Loading the settings may itself log; that record must not start loading them again.
_building = threading.local()


def _environment_key(env: Mapping[str, str]) -> tuple[Any, ...]:
    config = env.get("SELFHEAL_CONFIG") or ""
    try:
        stamp = os.stat(config).st_mtime_ns if config else None
    except OSError:
        stamp = None
    relevant = sorted((k, v) for k, v in env.items() if k.upper().startswith(ENV_PREFIXES))
    return (config, stamp, tuple(relevant))


def default_redactor() -> Redactor:
    """The redactor of this process's settings and environment, rebuilt when either changes."""
    global _cache
    env = dict(os.environ)
    key = _environment_key(env)
    with _cache_lock:
        if _cache is not None and _cache[0] == key:
            return _cache[1]
    if getattr(_building, "active", False):
        return Redactor(frozenset(configured_secrets(None, env)))
    from healing.config import load_settings
    from healing.errors import SelfHealError

    _building.active = True
    try:
        settings: Settings | None = load_settings(env=env)
    except SelfHealError:  # a broken config still leaves the environment's secrets to protect
        settings = None
    finally:
        _building.active = False
    redactor = Redactor(frozenset(configured_secrets(settings, env)))
    with _cache_lock:
        _cache = (key, redactor)
    return redactor


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` without any configured secret (nor any of ``extra``)."""
    redactor = default_redactor()
    extra = [s for s in extra if s]
    return (redactor.with_secrets(extra) if extra else redactor)(text)


# --------------------------------------------------------------------------- logging

class RedactingFilter(logging.Filter):
    """Rewrites a record's message (arguments merged in) and exception text without any secret.

    Attached to handlers (a filter on a logger would not see its children's records).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = default_redactor()
        if redactor.secrets:
            message = record.getMessage()
            clean = redactor(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redactor(record.exc_text)
            if record.stack_info:
                record.stack_info = redactor(record.stack_info)
        return True


_FILTER = RedactingFilter()
_base_factory = logging.getLogRecordFactory()


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    _FILTER.filter(record)
    return record


def install_log_redaction() -> None:
    """Redact every log record of this process, whichever logger and handler it goes through.

    The record factory covers loggers and handlers configured later (the worker's file handler,
    Streamlit's, httpx's); the filter on the root logger's current handlers also covers exception
    text formatted after the record was made. Idempotent.
    """
    logging.setLogRecordFactory(_redacting_factory)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
