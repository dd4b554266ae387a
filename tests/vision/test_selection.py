"""Choosing providers: config, VLM_* variables, --model/--endpoint, API keys, upload allow-list."""

from __future__ import annotations

import argparse

import pytest

from healing.errors import EXIT_USAGE, ConfigError, UsageError
from healing.vision import (
    AnthropicProvider,
    OpenAICompatibleProvider,
    StatisticalProvider,
    add_model_arguments,
    build_providers,
    providers_for_upload,
)

from .conftest import API_KEY, settings_from_yaml


def describe(providers):
    return [(p.name, type(p).__name__, getattr(p, "endpoint", None), getattr(p, "model", None),
             getattr(p, "has_api_key", None)) for p in providers]


def test_default_is_statistical_with_configured_thresholds(tmp_path):
    settings = settings_from_yaml(tmp_path, "health_check:\n  threshold: {warning: 0.6, critical: 0.8}\n")
    (provider,) = build_providers(None, settings, env={})
    assert isinstance(provider, StatisticalProvider)
    assert (provider.warning, provider.critical) == (0.6, 0.8)


def test_names_from_string_and_list_with_defaults(settings):
    providers = build_providers(" LMStudio, ollama,vllm,openai,anthropic,statistical,lmstudio", settings, env={})
    assert describe(providers) == [
        ("lmstudio", "OpenAICompatibleProvider", "http://localhost:1234/v1", None, False),
        ("ollama", "OpenAICompatibleProvider", "http://localhost:11434/v1", "llava", False),
        ("vllm", "OpenAICompatibleProvider", "http://localhost:8000/v1", None, False),
        ("openai", "OpenAICompatibleProvider", "https://api.openai.com/v1", "gpt-4o-mini", False),
        ("anthropic", "AnthropicProvider", "https://api.anthropic.com", "claude-3-5-sonnet-latest", False),
        ("statistical", "StatisticalProvider", None, None, None),
    ]
    assert [p.name for p in build_providers(["statistical", "ollama,vllm"], settings, env={})] == \
        ["statistical", "ollama", "vllm"]
    assert providers[0].discover_model and not providers[1].discover_model


def test_unknown_names(settings, tmp_path):
    with pytest.raises(UsageError) as err:
        build_providers("lmstudio,gpt5", settings, env={})
    assert str(err.value) == ("--model: unknown vision model 'gpt5' (choose from statistical, lmstudio, "
                              "ollama, vllm, openai, anthropic)")
    assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError, match="no vision model named"):
        build_providers(" , ", settings, env={})
    bad = settings_from_yaml(tmp_path, "vision_model:\n  provider: llava\n")
    with pytest.raises(ConfigError, match="config: vision_model.provider: unknown vision model 'llava'"):
        build_providers(None, bad, env={})


def test_config_applies_to_the_configured_provider_only(tmp_path):
    settings = settings_from_yaml(tmp_path, """
vision_model:
  provider: lmstudio
  endpoint: http://gpu-box:1234/v1/
  model: llava-phi-3
  timeout: 12
  max_retries: 1
  max_size: 256
  api_key: lm-key-123456
""")
    lm, ollama = build_providers("lmstudio,ollama", settings, env={})
    assert describe([lm, ollama]) == [
        ("lmstudio", "OpenAICompatibleProvider", "http://gpu-box:1234/v1", "llava-phi-3", True),
        ("ollama", "OpenAICompatibleProvider", "http://localhost:11434/v1", "llava", False),
    ]
    assert (lm.timeout, lm.policy.max_retries, lm.max_size, lm.discover_model) == (12.0, 1, 256, False)


def test_vlm_environment_variables(tmp_path):
    settings = settings_from_yaml(tmp_path, "vision_model:\n  provider: lmstudio\n",
                                  VLM_MODEL_PROVIDER="vllm", VLM_MODEL_ENDPOINT="http://10.0.0.5:8000/v1",
                                  VLM_MODEL_NAME="Qwen2-VL")
    (provider,) = build_providers(None, settings, env={})
    assert describe([provider]) == [("vllm", "OpenAICompatibleProvider", "http://10.0.0.5:8000/v1", "Qwen2-VL", False)]


def test_cli_endpoint_wins_and_must_be_unambiguous(tmp_path):
    settings = settings_from_yaml(tmp_path, "vision_model:\n  provider: lmstudio\n  endpoint: http://a:1/v1\n")
    stat, lm = build_providers("statistical,lmstudio", settings, endpoint="http://b:2/v1", env={})
    assert lm.endpoint == "http://b:2/v1"
    with pytest.raises(UsageError, match="--endpoint needs exactly one HTTP vision model in --model, got 2"):
        build_providers("lmstudio,anthropic", settings, endpoint="http://b:2/v1", env={})
    with pytest.raises(UsageError, match="got 0"):
        build_providers("statistical", settings, endpoint="http://b:2/v1", env={})


@pytest.mark.parametrize("url", ["localhost:1234", "ftp://x/v1", "http://", "http://u:pw@host/v1",
                                 "http://host/v1?key=1", "http://host:99999/v1"])
def test_bad_endpoints_are_usage_errors(settings, url):
    with pytest.raises(UsageError) as err:
        build_providers("lmstudio", settings, endpoint=url, env={})
    assert str(err.value).startswith("--endpoint: ")


def test_bad_configured_endpoint_is_a_config_error(tmp_path):
    settings = settings_from_yaml(tmp_path, "vision_model:\n  provider: ollama\n  endpoint: not-a-url\n")
    with pytest.raises(ConfigError, match="config: vision_model.endpoint: expected an http"):
        build_providers(None, settings, env={})


def test_keys_from_environment_override_config(tmp_path):
    settings = settings_from_yaml(tmp_path, "vision_model:\n  provider: anthropic\n  api_key: from-config-1234\n")
    env = {"OPENAI_API_KEY": API_KEY}
    openai, anthropic, lm = build_providers("openai,anthropic,lmstudio", settings, env=env)
    assert (openai.has_api_key, anthropic.has_api_key, lm.has_api_key) == (True, True, False)
    assert openai._api_key == API_KEY and anthropic._api_key == "from-config-1234"
    (anthropic,) = build_providers("anthropic", settings, env={"ANTHROPIC_API_KEY": "env-key-5678"})
    assert anthropic._api_key == "env-key-5678"
    text = repr(openai) + str(anthropic) + repr(settings.masked())
    assert API_KEY not in text and "env-key-5678" not in text and "from-config-1234" not in text


def test_add_model_arguments():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--model", "statistical,lmstudio", "--endpoint", "http://localhost:1234/v1"])
    assert (args.model, args.endpoint) == ("statistical,lmstudio", "http://localhost:1234/v1")
    args = parser.parse_args([])
    assert (args.model, args.endpoint) == (None, None)
    assert "anthropic" in parser.format_help()


def test_upload_allow_list(tmp_path):
    settings = settings_from_yaml(tmp_path, """
vision_model:
  provider: lmstudio
  endpoint: http://gpu-box:1234/v1
  upload_allowlist: [statistical, lmstudio]
""")
    assert [p.name for p in providers_for_upload(None, settings, env={})] == ["statistical"]
    (lm,) = providers_for_upload("lmstudio", settings, env={})
    assert isinstance(lm, OpenAICompatibleProvider) and lm.endpoint == "http://gpu-box:1234/v1"
    assert [p.name for p in providers_for_upload(["statistical", "lmstudio"], settings, env={})] == \
        ["statistical", "lmstudio"]
    with pytest.raises(UsageError) as err:
        providers_for_upload("anthropic", settings, env={"ANTHROPIC_API_KEY": API_KEY})
    assert str(err.value) == "vision model 'anthropic' is not allowed for uploads (allowed: statistical, lmstudio)"
    for attempt in ("http://evil.example/v1", "lmstudio@http://evil:1/v1", "127.0.0.1:1234"):
        with pytest.raises(UsageError, match="uploads may name a vision model, not a URL"):
            providers_for_upload(attempt, settings, env={})


def test_upload_default_allow_list_is_statistical_only(settings):
    with pytest.raises(UsageError, match=r"not allowed for uploads \(allowed: statistical\)"):
        providers_for_upload("lmstudio", settings, env={})
    assert isinstance(providers_for_upload("statistical", settings, env={})[0], StatisticalProvider)


def test_anthropic_provider_type(settings):
    (provider,) = build_providers("anthropic", settings, endpoint="https://proxy.internal/v1", env={})
    assert isinstance(provider, AnthropicProvider) and provider.endpoint == "https://proxy.internal"
