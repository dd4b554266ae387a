"""Combining several providers' opinions into one suggestion (the guide's ensemble checks).

Each voter is a provider that answered (``ok``) with a definite status; failed providers and
``unknown`` answers do not vote. Three aggregations, all pure functions of the results:

- ``voting``: one vote per provider; the most common status wins. Confidence is the mean
  confidence of the providers that voted for it.
- ``averaging``: each provider puts its confidence on the status it suggests; the status with
  the highest mean wins, and that mean is the confidence.
- ``weighted``: as averaging, with per-provider weights (``vision_model.weights``, default 1.0;
  weight 0 means the provider does not vote).

Ties go to the more severe status: when providers disagree evenly, the operator should look.
``agreement`` is always the plain fraction of voters whose own status equals the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from healing.errors import UsageError
from healing.vision._types import AnalysisContext, Finding, ProviderResult, VisionProvider

if TYPE_CHECKING:
    import httpx

    from healing.config import Settings

AGGREGATIONS = ("voting", "averaging", "weighted")
_SEVERITY_ORDER = ("healthy", "warning", "critical")  # ties resolve towards the end of this tuple
_TIE_EPSILON = 1e-9


@dataclass
class EnsembleResult:
    """The combined suggestion plus every provider's own result (failed ones included, for the report)."""

    status: str
    confidence: float
    agreement: float
    aggregation: str
    results: list[ProviderResult] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # per status: votes or mean confidence

    @property
    def voters(self) -> list[str]:
        return [r.provider for r in self.results if _votes(r)]

    @property
    def errors(self) -> list[str]:
        """One line per failed provider."""
        return [r.error or f"{r.provider}: failed" for r in self.results if not r.ok]

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results if r.ok for f in r.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "confidence": round(self.confidence, 4),
            "agreement": round(self.agreement, 4),
            "aggregation": self.aggregation,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "voters": self.voters,
            "errors": self.errors,
            "providers": [r.to_dict() for r in self.results],
        }


def _votes(result: ProviderResult) -> bool:
    return result.ok and result.status in _SEVERITY_ORDER


def _winner(scores: Mapping[str, float]) -> str:
    best = max(scores.values())
    return [s for s in _SEVERITY_ORDER if scores.get(s, 0.0) >= best - _TIE_EPSILON][-1]


def aggregate(
    results: Sequence[ProviderResult],
    aggregation: str = "voting",
    weights: Mapping[str, float] | None = None,
) -> EnsembleResult:
    """Combine provider results (see the module docstring for the three methods)."""
    if aggregation not in AGGREGATIONS:
        raise UsageError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    weights = weights or {}
    voters = [r for r in results if _votes(r)]
    if aggregation == "weighted":
        voters = [r for r in voters if weights.get(r.provider, 1.0) > 0]
    if not voters:
        return EnsembleResult("unknown", 0.0, 0.0, aggregation, list(results), {})

    scores = dict.fromkeys(_SEVERITY_ORDER, 0.0)
    if aggregation == "voting":
        for r in voters:
            scores[r.status] += 1.0
        status = _winner(scores)
        agreeing = [r.confidence for r in voters if r.status == status]
        confidence = sum(agreeing) / len(agreeing)
    else:
        weight_of = (lambda r: float(weights.get(r.provider, 1.0))) if aggregation == "weighted" else (lambda r: 1.0)
        total = sum(weight_of(r) for r in voters)
        for r in voters:
            scores[r.status] += weight_of(r) * r.confidence / total
        status = _winner(scores)
        confidence = scores[status]
    agreement = sum(1 for r in voters if r.status == status) / len(voters)
    return EnsembleResult(status, min(1.0, max(0.0, confidence)), agreement, aggregation, list(results), scores)


def run_providers(providers: Sequence[VisionProvider], context: AnalysisContext) -> list[ProviderResult]:
    """Run providers concurrently (they mostly wait on the network); results in the providers' order."""
    if len(providers) <= 1:
        return [_safe_analyze(p, context) for p in providers]
    with ThreadPoolExecutor(max_workers=min(8, len(providers)), thread_name_prefix="vision") as pool:
        return list(pool.map(lambda p: _safe_analyze(p, context), providers))


def _safe_analyze(provider: VisionProvider, context: AnalysisContext) -> ProviderResult:
    # Providers promise not to raise; a third-party provider that does still must not end the check.
    try:
        return provider.analyze(context)
    except Exception as exc:
        return ProviderResult.failure(getattr(provider, "name", type(provider).__name__),
                                      f"provider raised {type(exc).__name__}")


class ModelEnsemble:
    """A named set of providers with weights — what ``VLMHealthChecker.add_model`` fills in."""

    def __init__(self, settings: Settings, *, client: httpx.Client | None = None,
                 env: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._client = client
        self._env = env
        self._sleep = sleep
        self._providers: dict[str, VisionProvider] = {}
        self._weights: dict[str, float] = {}

    def add_model(self, name: str, endpoint: str | None = None, api_key: str | None = None,
                  model: str | None = None, weight: float | None = None) -> VisionProvider:
        """Register provider ``name``; ``weight`` defaults to ``vision_model.weights[name]`` or 1.0.

        ``endpoint`` comes from the operator's code here, like ``--endpoint`` on the command line;
        uploads go through :func:`healing.vision.providers_for_upload` instead.
        """
        from healing.vision.selection import make_provider

        key = name.strip().lower()
        if weight is not None and weight < 0:
            raise UsageError(f"weight of vision model {key!r} must be ≥ 0, got {weight}")
        provider = make_provider(key, self.settings, endpoint=endpoint, api_key=api_key, model=model,
                                 client=self._client, env=self._env, sleep=self._sleep)
        self._providers[key] = provider
        self._weights[key] = float(weight) if weight is not None else float(self.settings.vision_model.weights.get(key, 1.0))
        return provider

    @property
    def names(self) -> list[str]:
        return list(self._providers)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def providers(self, models: Sequence[str] | None = None) -> list[VisionProvider]:
        """The providers to run: ``models`` by name (added ones, else built from settings), or all added."""
        from healing.vision.selection import make_provider, parse_model_names

        if models is None and self._providers:
            return list(self._providers.values())
        names = parse_model_names(models, self.settings)
        return [self._providers.get(n) or make_provider(n, self.settings, client=self._client, env=self._env,
                                                        sleep=self._sleep) for n in names]

    def analyze(self, context: AnalysisContext, models: Sequence[str] | None = None,
                aggregation: str = "voting") -> EnsembleResult:
        """Run the chosen providers on ``context`` and aggregate their suggestions."""
        if aggregation not in AGGREGATIONS:
            raise UsageError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        results = run_providers(self.providers(models), context)
        weights = {**self.settings.vision_model.weights, **self._weights}
        return aggregate(results, aggregation, weights)


class EnsembleCheckMixin:
    """``add_model`` and the model half of ``check_health_ensemble`` for a checker with ``self.settings``."""

    settings: Settings

    def _model_ensemble(self) -> ModelEnsemble:
        ensemble = self.__dict__.get("_vision_ensemble")
        if ensemble is None:
            ensemble = ModelEnsemble(self.settings, client=getattr(self, "http_client", None))
            self.__dict__["_vision_ensemble"] = ensemble
        return ensemble

    def add_model(self, name: str, endpoint: str | None = None, api_key: str | None = None,
                  model: str | None = None, weight: float | None = None) -> None:
        """Register a vision model for ensemble checks (the guide's ``checker.add_model``)."""
        self._model_ensemble().add_model(name, endpoint=endpoint, api_key=api_key, model=model, weight=weight)

    def run_vision_models(self, context: AnalysisContext, models: Sequence[str] | None = None,
                          aggregation: str = "voting") -> EnsembleResult:
        """Run the registered (or named) models on an analysis context and aggregate them."""
        return self._model_ensemble().analyze(context, models=models, aggregation=aggregation)
