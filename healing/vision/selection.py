"""Choosing and building providers from the config, the environment and the command line.

Precedence for an HTTP provider's endpoint: ``--endpoint`` (CLI) > ``vision_model.endpoint`` /
``VLM_MODEL_ENDPOINT`` (only for the provider named in ``vision_model.provider``) > the provider's
default. The same rule applies to ``vision_model.model`` / ``VLM_MODEL_NAME`` and to
``vision_model.api_key``; the ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` environment variables
override a configured key for their provider, and ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` (the
vendor SDKs' own variables, e.g. for a gateway) replace the provider's default endpoint.

This module imports only the standard library at top level: the ``check`` command calls
:func:`add_model_arguments` while the CLI starts.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from healing.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import httpx

    from healing.config import Settings
    from healing.vision._types import VisionProvider


@dataclass(frozen=True)
class ProviderSpec:
    kind: str  # "openai" (chat completions), "anthropic" (messages) or "statistical"
    default_endpoint: str | None = None
    default_model: str | None = None
    key_env: str | None = None  # environment variable holding the API key
    requires_key: bool = False
    discover_model: bool = False  # ask GET /models for the loaded model when none is configured
    base_url_env: str | None = None  # environment variable naming another base URL (the vendor SDKs' own)


PROVIDERS: dict[str, ProviderSpec] = {
    "statistical": ProviderSpec("statistical"),
    "lmstudio": ProviderSpec("openai", "http://localhost:1234/v1", discover_model=True),
    "ollama": ProviderSpec("openai", "http://localhost:11434/v1", default_model="llava"),
    "vllm": ProviderSpec("openai", "http://localhost:8000/v1", discover_model=True),
    "openai": ProviderSpec("openai", "https://api.openai.com/v1", default_model="gpt-4o-mini",
                           key_env="OPENAI_API_KEY", requires_key=True, base_url_env="OPENAI_BASE_URL"),
    "anthropic": ProviderSpec("anthropic", "https://api.anthropic.com", default_model="claude-3-5-sonnet-latest",
                              key_env="ANTHROPIC_API_KEY", requires_key=True, base_url_env="ANTHROPIC_BASE_URL"),
}
PROVIDER_NAMES = tuple(PROVIDERS)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model NAME[,NAME...]`` and ``--endpoint URL`` to a sub-command's parser."""
    parser.add_argument(
        "--model", metavar="NAME[,NAME...]", default=None,
        help=f"vision model provider(s): {', '.join(PROVIDER_NAMES)} "
             "(default: vision_model.provider, normally statistical); several run as an ensemble",
    )
    parser.add_argument(
        "--endpoint", metavar="URL", default=None,
        help="base URL of the one HTTP model named by --model (e.g. http://localhost:1234/v1)",
    )


def parse_model_names(names: str | Sequence[str] | None, settings: Settings) -> list[str]:
    """Validated, de-duplicated provider names; None means the configured provider."""
    from_config = names is None or names == "" or names == []
    if from_config:
        raw: list[str] = [settings.vision_model.provider]
    elif isinstance(names, str):
        raw = names.split(",")
    else:
        raw = [part for name in names for part in str(name).split(",")]
    out: list[str] = []
    for name in (n.strip().lower() for n in raw):
        if not name:
            continue
        if name not in PROVIDERS:
            where = "config: vision_model.provider" if from_config else "--model"
            error = ConfigError if from_config else UsageError
            raise error(f"{where}: unknown vision model {name!r} (choose from {', '.join(PROVIDER_NAMES)})")
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError("--model: no vision model named")
    return out


def build_providers(
    names: str | Sequence[str] | None,
    settings: Settings,
    endpoint: str | None = None,
    client: httpx.Client | None = None,
    *,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[VisionProvider]:
    """The providers for ``check --model NAMES [--endpoint URL]``, in the order named.

    ``endpoint`` applies to the single HTTP provider among ``names``; naming it with several (or no)
    HTTP providers is a usage error, because it would be ambiguous which one it points at.
    """
    chosen = parse_model_names(names, settings)
    if endpoint is not None:
        endpoint = validate_endpoint(endpoint, "--endpoint")
        http = [n for n in chosen if PROVIDERS[n].kind != "statistical"]
        if len(http) != 1:
            raise UsageError(f"--endpoint needs exactly one HTTP vision model in --model, got {len(http)}")
    return [make_provider(name, settings, endpoint=endpoint, client=client, env=env, sleep=sleep) for name in chosen]


def make_provider(
    name: str,
    settings: Settings,
    *,
    endpoint: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    client: httpx.Client | None = None,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> VisionProvider:
    """One provider by name; explicit ``endpoint``/``api_key``/``model`` win over settings and defaults."""
    spec = PROVIDERS.get(name)
    if spec is None:
        raise UsageError(f"unknown vision model {name!r} (choose from {', '.join(PROVIDER_NAMES)})")
    if spec.kind == "statistical":
        from healing.vision.providers import StatisticalProvider

        hc = settings.health_check
        return StatisticalProvider(hc.warning_threshold, hc.critical_threshold)

    vm = settings.vision_model
    env = os.environ if env is None else env
    configured = vm.provider == name  # the vision_model section describes this provider
    if endpoint is not None:
        endpoint = validate_endpoint(endpoint, "endpoint")
    elif configured and vm.endpoint:
        endpoint = validate_endpoint(vm.endpoint, "config: vision_model.endpoint")
    elif spec.base_url_env and env.get(spec.base_url_env):
        endpoint = validate_endpoint(env[spec.base_url_env], f"config: {spec.base_url_env}")
    else:
        endpoint = spec.default_endpoint
    key = api_key or (env.get(spec.key_env) if spec.key_env else None) or (vm.api_key if configured else None)
    model = model or (vm.model if configured else None) or spec.default_model
    hint = " or ".join(x for x in (spec.key_env, "vision_model.api_key") if x)
    kwargs: dict[str, Any] = dict(
        model=model, api_key=key, requires_key=spec.requires_key, key_hint=f"set {hint}",
        timeout=vm.timeout, max_retries=vm.max_retries, max_size=vm.max_size, client=client, sleep=sleep,
    )
    from healing.vision.providers import AnthropicProvider, OpenAICompatibleProvider

    assert endpoint is not None  # every HTTP spec has a default endpoint
    if spec.kind == "anthropic":
        return AnthropicProvider(name, endpoint, **kwargs)
    return OpenAICompatibleProvider(name, endpoint, discover_model=spec.discover_model and model is None, **kwargs)


def validate_endpoint(url: str, where: str) -> str:
    """An http(s) base URL without credentials, query or fragment; otherwise a one-line error."""
    from urllib.parse import urlsplit

    error = ConfigError if where.startswith("config") else UsageError
    try:
        parts = urlsplit(str(url).strip())
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise error(f"{where}: expected an http(s) URL such as http://localhost:1234/v1")
    if parts.username or parts.password or parts.query or parts.fragment:
        # credentials in a URL end up in logs and reports; keys belong in the key settings
        raise error(f"{where}: the URL must not carry credentials, a query or a fragment")
    return str(url).strip().rstrip("/")


def providers_for_upload(
    requested_name: str | Sequence[str] | None,
    settings: Settings,
    client: httpx.Client | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> list[VisionProvider]:
    """Providers for a dashboard upload: only names on ``vision_model.upload_allowlist``, never a URL.

    Endpoints come from the operator's config alone, so an uploader cannot make the server send an
    image (or a key) anywhere else.
    """
    raw = [requested_name] if isinstance(requested_name, str) or requested_name is None else list(requested_name)
    names: list[str] = []
    for item in raw:
        for name in str(item if item is not None else "statistical").split(","):
            name = name.strip().lower()
            if "/" in name or ":" in name:
                raise UsageError("uploads may name a vision model, not a URL")
            if name and name not in names:
                names.append(name)
    allowed = settings.vision_model.upload_allowlist
    for name in names or ["statistical"]:
        if name not in allowed or name not in PROVIDERS:
            raise UsageError(f"vision model {name!r} is not allowed for uploads (allowed: {', '.join(allowed) or 'none'})")
    return [make_provider(name, settings, client=client, env=env) for name in names or ["statistical"]]
