"""Vision-model providers and ensembles for image health checks.

A provider looks at an :class:`AnalysisContext` (pixels, entropy overlay, metrics the analysis
engine computed) and returns a :class:`ProviderResult`: a status suggestion, a confidence and
findings whose regions are mapped back to byte ranges along the Hilbert curve. Providers never
raise; an unavailable model yields a failed result naming itself and the reason.

Names are loaded on first use (PEP 562), so the CLI can import this package cheaply.
"""

from __future__ import annotations

from healing._lazy import lazy_exports

_EXPORTS = {
    "AnalysisContext": "_types",
    "EntropyOutlier": "_types",
    "Finding": "_types",
    "ProviderResult": "_types",
    "VisionProvider": "_types",
    "AnthropicProvider": "providers",
    "OpenAICompatibleProvider": "providers",
    "StatisticalProvider": "providers",
    "VisionModelError": "providers",
    "status_from_findings": "providers",
    "parse_answer": "parsing",
    "region_byte_ranges": "regions",
    "PROVIDER_NAMES": "selection",
    "add_model_arguments": "selection",
    "build_providers": "selection",
    "make_provider": "selection",
    "providers_for_upload": "selection",
    "AGGREGATIONS": "ensemble",
    "EnsembleCheckMixin": "ensemble",
    "EnsembleResult": "ensemble",
    "ModelEnsemble": "ensemble",
    "aggregate": "ensemble",
    "run_providers": "ensemble",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
