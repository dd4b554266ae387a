"""Aggregating provider results, and ensembles of real providers against the local server."""

from __future__ import annotations

import json

import pytest

from healing.errors import UsageError
from healing.vision import EnsembleCheckMixin, ModelEnsemble, ProviderResult, aggregate, run_providers

from .conftest import API_KEY, Reply, openai_reply, settings_from_yaml, small_context

ANSWER = json.dumps({"summary": "bad block", "confidence": 0.8, "findings": [
    {"category": "corruption", "severity": "high", "description": "noise", "region": [1, 1, 2, 2]}]})


def r(provider, status, confidence):
    return ProviderResult(provider=provider, ok=True, status=status, confidence=confidence)


RESULTS = [
    r("a", "healthy", 0.9), r("b", "warning", 0.6), r("c", "warning", 0.8),
    ProviderResult.failure("d", "Vision model not available at http://localhost:1234/v1"),
    r("e", "unknown", 0.99),
]


def summary(result):
    return (result.status, round(result.confidence, 4), round(result.agreement, 4))


def test_voting():
    result = aggregate(RESULTS, "voting")
    assert summary(result) == ("warning", 0.7, 0.6667)
    assert result.scores == {"healthy": 1.0, "warning": 2.0, "critical": 0.0}
    assert result.voters == ["a", "b", "c"]
    assert result.errors == ["d: Vision model not available at http://localhost:1234/v1"]


def test_averaging():
    result = aggregate(RESULTS, "averaging")
    assert summary(result) == ("warning", 0.4667, 0.6667)
    assert round(result.scores["healthy"], 4) == 0.3


def test_weighted():
    assert summary(aggregate(RESULTS, "weighted", {"a": 3.0})) == ("healthy", 0.54, 0.3333)
    # weight 0 takes a provider out of the vote entirely
    assert summary(aggregate(RESULTS, "weighted", {"a": 0.0})) == ("warning", 0.7, 1.0)
    # weights are ignored by the unweighted methods
    assert summary(aggregate(RESULTS, "averaging", {"a": 3.0})) == ("warning", 0.4667, 0.6667)


def test_ties_go_to_the_more_severe_status():
    tied = [r("a", "healthy", 0.9), r("b", "critical", 0.5)]
    assert summary(aggregate(tied, "voting")) == ("critical", 0.5, 0.5)
    even = [r("a", "healthy", 0.5), r("b", "warning", 0.5)]
    assert summary(aggregate(even, "averaging")) == ("warning", 0.25, 0.5)


def test_without_voters_the_result_is_unknown():
    failed = [ProviderResult.failure("x", "down"), r("y", "unknown", 0.4)]
    for method in ("voting", "averaging", "weighted"):
        result = aggregate(failed, method)
        assert summary(result) == ("unknown", 0.0, 0.0)
        assert result.errors == ["x: down"]
    assert summary(aggregate([], "voting")) == ("unknown", 0.0, 0.0)


def test_unknown_aggregation():
    with pytest.raises(UsageError, match="aggregation must be one of voting, averaging, weighted, got 'median'"):
        aggregate(RESULTS, "median")


def test_a_raising_provider_does_not_end_the_run():
    class Broken:
        name = "broken"

        def analyze(self, context):
            raise KeyError("x")

    (result,) = run_providers([Broken()], small_context())
    assert (result.ok, result.error) == (False, "broken: provider raised KeyError")


def test_ensemble_of_statistical_lmstudio_and_anthropic(server, tmp_path):
    settings = settings_from_yaml(tmp_path, "vision_model:\n  weights: {lmstudio: 2}\n")
    server.reply(openai_reply(ANSWER))
    ensemble = ModelEnsemble(settings, env={}, sleep=lambda s: None)
    ensemble.add_model("statistical")
    ensemble.add_model("lmstudio", endpoint=f"{server.url}/v1", model="m")
    ensemble.add_model("anthropic")  # no key anywhere: fails, does not vote
    assert ensemble.names == ["statistical", "lmstudio", "anthropic"]
    assert ensemble.weights == {"statistical": 1.0, "lmstudio": 2.0, "anthropic": 1.0}

    result = ensemble.analyze(small_context(anomaly_score=0.2), aggregation="weighted")
    # statistical: healthy 0.8571 (weight 1); lmstudio: critical 0.8 (weight 2) → 1.6/3 vs 0.8571/3
    assert summary(result) == ("critical", 0.5333, 0.5)
    assert result.errors == ["anthropic: no API key (set ANTHROPIC_API_KEY or vision_model.api_key)"]
    assert [(f.source, f.byte_range) for f in result.findings] == [("lmstudio", (8, 56))]
    data = result.to_dict()
    assert (data["status"], data["voters"], len(data["providers"])) == ("critical", ["statistical", "lmstudio"], 3)

    server.reply(openai_reply(ANSWER))
    assert summary(ensemble.analyze(small_context(anomaly_score=0.2), aggregation="voting")) == ("critical", 0.8, 0.5)
    only = ensemble.analyze(small_context(anomaly_score=0.2), models=["statistical"])
    assert summary(only) == ("healthy", 0.8571, 1.0) and len(server.requests) == 2


def test_ensemble_with_a_model_that_is_down_keeps_the_rest(server, tmp_path):
    settings = settings_from_yaml(tmp_path, "vision_model:\n  max_retries: 1\n")
    server.reply(Reply(503, "x"), Reply(503, "x"))
    ensemble = ModelEnsemble(settings, env={}, sleep=lambda s: None)
    ensemble.add_model("lmstudio", endpoint=f"{server.url}/v1", model="m")
    result = ensemble.analyze(small_context(anomaly_score=0.95), models=["statistical", "lmstudio"])
    assert summary(result) == ("critical", 0.75, 1.0)
    assert result.errors == [f"lmstudio: HTTP 503 from {server.url}/v1/chat/completions after 2 attempts: x"]


def test_mixin_for_the_health_checker(server, tmp_path):
    class Checker(EnsembleCheckMixin):
        def __init__(self, settings):
            self.settings = settings

    settings = settings_from_yaml(tmp_path, "vision_model: {}\n")
    server.reply(openai_reply('{"summary": "fine", "confidence": 0.9, "findings": []}'))
    checker = Checker(settings)
    checker.add_model("openai", endpoint=f"{server.url}/v1", api_key=API_KEY, model="gpt-test", weight=0.5)
    checker.add_model("statistical")
    result = checker.run_vision_models(small_context(anomaly_score=0.1), aggregation="weighted")
    # (0.9 × 0.5 + 0.9286 × 1) / 1.5 = 0.9191; both healthy
    assert summary(result) == ("healthy", 0.9191, 1.0)
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in json.dumps(result.to_dict())
    with pytest.raises(UsageError, match="must be ≥ 0"):
        checker.add_model("statistical", weight=-1)
