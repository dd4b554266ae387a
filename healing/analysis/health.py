"""The health checker: ``VLMHealthChecker().check_health(path, ...) -> HealthCheckResult``.

Decision rules (DESIGN.md §5):
  1. Integrity first. A PixelRTS payload whose sha256 matches ``data_hash`` is exactly what was
     written; statistics and models may describe it but never make it critical. A hash mismatch,
     non-zero padding, a segment mismatch, broken PixelRTS structure, metadata that is present but
     invalid (healing.pixelrts._schema) or an undecodable container is critical, whatever the
     statistics say — every problem `validate` reports, so the two always agree.
  2. A baseline localises: with one, every block whose sha256 changed is named as a byte range of
     the curve-ordered stream and the bounding box of its pixels. A file that verifies but differs
     from its baseline changed into another valid image: a ``security`` finding, status warning.
     A baseline also proves a plain PNG unchanged (its block hashes are a hash that can decide).
  3. Only where no hash can decide (a plain PNG without a baseline) do the providers'
     statistics decide, with ``anomaly_score`` against health_check.threshold.warning / critical,
     confidence below 1 and the reason in the findings. For curve streams the score comes from
     zero- and noise-filled runs (healing.analysis.ranges, calibrated in docs/statistics.md).

Providers are pluggable: any object with ``.name`` and ``.analyze(AnalysisContext) ->
ProviderResult`` (healing.vision). The default is the ``statistical`` provider, which turns this
module's numbers into a suggestion; ``models=`` names providers to build from the settings
(``check --model``), several of them vote as an ensemble.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from healing.analysis.anomaly import AnomalyModel, AnomalyReport, assess, assess_stream
from healing.analysis.entropy import EntropyMap, entropy_map, tiled_entropy_map
from healing.analysis.geometry import range_region
from healing.analysis.loading import LoadedImage, load_image
from healing.analysis.status import HealthStatus, iso_now
from healing.config import Settings, load_settings
from healing.errors import CorruptedError, InputError
from healing.vision.ensemble import EnsembleCheckMixin

log = logging.getLogger("selfheal.checker")

SOURCE_INTEGRITY = "integrity"
SOURCE_BASELINE = "baseline"
SOURCE_STATISTICAL = "statistical"
MAX_RANGE_FINDINGS = 64  # damaged ranges listed one finding each; the rest are summed up in one more
MAX_LIKELY_PLACES = 8  # entropy outliers offered as likely places of damage when no baseline exists
CONTEXT_SIZE = 512  # longer side of the downscaled picture handed to providers and used for edges
STATISTICAL_CONFIDENCE_CAP = 0.9  # statistics never claim certainty

# Metrics every result carries, even when the file could not be read (NaN here, null in JSON): the
# guide formats ``metrics['mean_entropy']`` and ``metrics['anomaly_score']`` without checking the status.
UNMEASURED_METRICS = ("mean_entropy", "anomaly_score")

# Problem kinds that describe the metadata rather than the payload: structural findings. Every problem
# the codec's verification reports is critical, as `validate` says (exit 2): the two never disagree.
_STRUCTURAL_KINDS = ("structure", "metadata", "sidecar_mismatch")


@dataclass
class HealthCheckResult:
    """The guide's HealthCheckResult plus ``duration_ms``; ``to_dict()`` is the `check --json` object.

    ``analysis`` keeps the arrays behind the numbers (entropy map, downscaled image, heatmap) for the
    dashboard and the `vision` command; ``providers`` the raw provider results. Neither is serialised.
    """

    image_path: str
    status: HealthStatus
    confidence: float
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    recommendation: str = ""
    timestamp: str = ""
    duration_ms: float = 0.0
    agreement: float | None = None
    analysis: dict[str, Any] = field(default_factory=dict, repr=False)
    providers: list[Any] = field(default_factory=list, repr=False)

    @property
    def summary(self) -> str:
        """One line: the status and the most important finding (or the recommendation)."""
        worst = sorted(self.findings, key=lambda f: {"high": 0, "medium": 1, "low": 2}.get(f.get("severity"), 3))
        detail = worst[0]["description"] if worst else self.recommendation
        return f"{HealthStatus(self.status).value}: {detail}"

    def to_dict(self) -> dict[str, Any]:
        """Exactly the object of DESIGN.md §4 (`check --json`); a metric that was not measured is null."""
        return {
            "image_path": self.image_path,
            "status": HealthStatus(self.status).value,
            "confidence": round(float(self.confidence), 4),
            "metrics": {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self.metrics.items()},
            "findings": [dict(f) for f in self.findings],
            "recommendation": self.recommendation,
            "timestamp": self.timestamp,
            "duration_ms": self.duration_ms,
        }


def make_finding(category: str, severity: str, description: str, *, byte_range: tuple[int, int] | None = None,
                 region: Sequence[int] | None = None, source: str = SOURCE_INTEGRITY) -> dict[str, Any]:
    """One finding in the `check --json` shape."""
    return {"category": category, "severity": severity, "description": description,
            "byte_range": [int(byte_range[0]), int(byte_range[1])] if byte_range is not None else None,
            "region": [int(v) for v in region] if region is not None else None, "source": source}


@dataclass
class Assessment:
    """What the statistics of one image say (pure numbers; no decision)."""

    entropy: EntropyMap
    anomaly: AnomalyReport
    small: np.ndarray  # the image reduced to CONTEXT_SIZE
    scale: float
    edge_density: float


def assess_image(loaded: LoadedImage, block_size: int, model: AnomalyModel, context_size: int = CONTEXT_SIZE) -> Assessment:
    """Entropy map, anomaly report and a downscaled picture with its edge density."""
    from healing.analysis.edges import sobel_edges

    if loaded.stream is not None and loaded.grid_size is not None:
        data_length = loaded.image.stored_length if loaded.is_pixelrts else None
        emap = entropy_map(loaded.stream, loaded.grid_size, block_size, data_length=data_length,
                           exclude_padding=not loaded.is_pixelrts)
        report = assess_stream(loaded.stream, emap, model)
    else:
        tile = max(1, int(round((block_size / 4) ** 0.5)))
        emap = tiled_entropy_map(loaded.pixels, tile)
        report = assess(emap, model)
    small, scale = loaded.downscaled(context_size)
    edges = sobel_edges(small, strongest=0)
    return Assessment(emap, report, small, scale, edges.edge_density)


class VLMHealthChecker(EnsembleCheckMixin):
    """Health checks of PixelRTS images and plain PNGs (see the module docstring for the rules).

    ``providers`` replaces the default provider list (objects with ``.name`` and ``.analyze``);
    ``models`` names providers to build from the settings, as `check --model` does. ``debug=True``
    logs every step of every check at DEBUG on ``selfheal.checker`` (to stderr when logging is not
    configured). With ``health_check.cache_results`` a result is reused for ``health_check.cache_ttl``
    seconds while the file (size, mtime, inode) and the check's arguments stay the same.
    """

    def __init__(self, settings: Settings | None = None, *, providers: Sequence[Any] | None = None,
                 models: str | Sequence[str] | None = None, endpoint: str | None = None,
                 aggregation: str = "voting", anomaly_model: AnomalyModel | None = None,
                 block_size: int | None = None, http_client: Any = None, debug: bool = False) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.block_size = int(block_size or self.settings.health_check.block_size)
        if self.block_size < 4:
            raise ValueError("block_size must be at least 4 bytes")
        self.anomaly_model = anomaly_model or AnomalyModel()
        self.aggregation = aggregation
        self.http_client = http_client
        self.debug = debug
        if debug:
            _enable_debug_logging()
        self._cache: dict[tuple[Any, ...], tuple[float, HealthCheckResult]] = {}
        self._cache_lock = threading.Lock()
        self._local = threading.local()  # per-thread step timings of the check in progress
        self._providers = list(providers) if providers is not None else None
        self._models = models
        self._endpoint = endpoint

    @property
    def warning_threshold(self) -> float:
        return self.settings.health_check.warning_threshold

    @property
    def critical_threshold(self) -> float:
        return self.settings.health_check.critical_threshold

    def providers_for(self, models: str | Sequence[str] | None = None) -> list[Any]:
        """The providers a check runs: explicit ones, else ``models`` built from the settings,
        else models added with ``add_model``, else the configured provider (normally statistical)."""
        from healing.vision.selection import build_providers, parse_model_names

        if models is None and self._providers is not None:
            return list(self._providers)
        names = models if models is not None else self._models
        added = self._model_ensemble().names if self.__dict__.get("_vision_ensemble") is not None else []
        if added and names is None:
            return self._model_ensemble().providers()
        if added and names is not None:
            # Models added with add_model keep their endpoint, key and weight; others come from the settings.
            return self._model_ensemble().providers(parse_model_names(names, self.settings))
        return build_providers(names, self.settings, self._endpoint, self.http_client)

    # ------------------------------------------------------------------ the check

    def check_health(self, path: str | os.PathLike[str], *, baseline: dict[str, Any] | None = None,
                     models: str | Sequence[str] | None = None, aggregation: str | None = None,
                     verbose: bool = False) -> HealthCheckResult:
        """Check one image. Never raises for bad input: unreadable → unknown, damaged → critical.

        ``verbose=True`` adds ``metrics["steps_ms"]`` (time per step) and ``metrics["provider_results"]``
        (every provider's full answer) to the result.
        """
        cache_key = self._cache_key(path, baseline, models, aggregation, verbose)
        cached = self._cached(cache_key)
        if cached is not None:
            log.debug("check %s: cached result from %s reused (health_check.cache_ttl %s s)", path, cached.timestamp,
                      self.settings.health_check.cache_ttl)
            return cached
        started = time.perf_counter()
        result = HealthCheckResult(str(path), HealthStatus.UNKNOWN, 0.0, timestamp=iso_now())
        self._local.steps = {} if verbose else None
        log.debug("check %s: loading (max_pixels %d)", path, self.settings.pixelrts.max_pixels)
        try:
            if not isinstance(path, str | os.PathLike):
                raise InputError(f"{path!r} is not a file path")
            with self._step("load"):
                loaded = load_image(path, max_pixels=self.settings.pixelrts.max_pixels, file_hash=baseline is not None,
                                    max_metadata_bytes=self.settings.pixelrts.max_metadata_bytes)
        except CorruptedError as exc:
            result.status, result.confidence = HealthStatus.CRITICAL, 0.99
            result.findings.append(make_finding("structural", "high", str(exc), source="codec"))
            result.recommendation = ("the PNG container is damaged (truncated, CRC error or broken PixelRTS structure): "
                                     f"restore it from its golden copy with `selfheal heal {path}`")
        except InputError as exc:
            result.findings.append(make_finding("structural", "medium", str(exc), source="codec"))
            result.recommendation = "nothing to judge: check that the path names a readable PNG or PixelRTS image"
        else:
            self._judge(result, loaded, baseline, models, aggregation or self.aggregation, verbose)
        for key in UNMEASURED_METRICS:
            result.metrics.setdefault(key, math.nan)
        for key in ("data_size", "grid_size", "hash_verified"):
            result.metrics.setdefault(key, None)
        if verbose:
            result.metrics["steps_ms"] = {k: round(v, 3) for k, v in (self._local.steps or {}).items()}
            if result.providers:
                result.metrics["provider_results"] = [r.to_dict() for r in result.providers]
        result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        log.debug("check %s: %s (confidence %.2f, %d finding(s), %.1f ms)", path, HealthStatus(result.status).value,
                  result.confidence, len(result.findings), result.duration_ms)
        self._store(cache_key, result)
        return result

    # ------------------------------------------------------------------ steps, cache

    def _step(self, name: str) -> _Step:
        return _Step(name, getattr(self._local, "steps", None))

    def _cache_key(self, path: Any, baseline: dict[str, Any] | None, models: Any, aggregation: str | None,
                   verbose: bool) -> tuple[Any, ...] | None:
        """What must be equal for a cached result to be reused; None when caching is off or impossible."""
        if not self.settings.health_check.cache_results or not isinstance(path, str | os.PathLike):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        import json

        pinned = json.dumps(baseline, sort_keys=True, default=str) if baseline is not None else None
        return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, pinned,
                repr(models), aggregation or self.aggregation, verbose)

    def _cached(self, key: tuple[Any, ...] | None) -> HealthCheckResult | None:
        if key is None:
            return None
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is None or time.monotonic() - hit[0] > self.settings.health_check.cache_ttl:
                self._cache.pop(key, None)
                return None
        result = copy.copy(hit[1])
        result.metrics = {**hit[1].metrics, "cached": True}
        result.findings = [dict(f) for f in hit[1].findings]
        return result

    def _store(self, key: tuple[Any, ...] | None, result: HealthCheckResult) -> None:
        if key is None:
            return
        now = time.monotonic()
        ttl = self.settings.health_check.cache_ttl
        with self._cache_lock:
            for stale in [k for k, (at, _) in self._cache.items() if now - at > ttl]:
                del self._cache[stale]
            self._cache[key] = (now, result)

    def check_health_ensemble(self, path: str | os.PathLike[str], models: str | Sequence[str] | None = None,
                              aggregation: str = "voting", *, baseline: dict[str, Any] | None = None,
                              verbose: bool = False) -> HealthCheckResult:
        """The guide's ensemble check: several providers vote; ``result.agreement`` says how much they agree.

        Models added with ``add_model`` are used with the endpoint, key and weight given there.
        """
        return self.check_health(path, baseline=baseline, models=models, aggregation=aggregation, verbose=verbose)

    # ------------------------------------------------------------------ judging

    def _judge(self, result: HealthCheckResult, loaded: LoadedImage, baseline: dict[str, Any] | None,
               models: str | Sequence[str] | None, aggregation: str, verbose: bool) -> None:
        with self._step("statistics"):
            stats = assess_image(loaded, self.block_size, self.anomaly_model)
        log.debug("check %s: entropy mean %.3f bits/byte over %d block(s), anomaly score %.4f, hash verified %s",
                  loaded.path, stats.entropy.stats["mean"], stats.entropy.blocks.size, stats.anomaly.score,
                  loaded.report.hash_verified if loaded.report is not None else None)
        report = loaded.report
        hash_verified = report.hash_verified if report is not None else None
        emap, anomaly = stats.entropy, stats.anomaly
        result.metrics.update({
            "mean_entropy": emap.stats["mean"], "min_entropy": emap.stats["min"], "max_entropy": emap.stats["max"],
            "entropy_std": emap.stats["std"], "entropy_bands": emap.stats["bands"],
            "anomaly_score": round(anomaly.score, 4), "outlier_blocks": anomaly.outlier_blocks,
            "data_size": loaded.image.data_size if loaded.is_pixelrts else int(
                loaded.stream.size if loaded.stream is not None else loaded.pixels.size),
            "grid_size": loaded.grid_size, "hash_verified": hash_verified, "block_size": emap.block_size,
            "blocks": int(emap.blocks.size), "edge_density": round(stats.edge_density, 6),
            "file_size": loaded.file_size, "pixelrts": loaded.is_pixelrts,
        })
        result.analysis = {"entropy": emap, "anomaly": anomaly, "small": stats.small, "scale": stats.scale,
                           "loaded": loaded}

        integrity_critical = False
        if report is not None:
            for problem in report.problems:
                integrity_critical = True
                rng = problem.byte_range
                region = range_region(rng, loaded.grid_size) if rng and rng[1] > rng[0] else None
                category = "structural" if problem.kind in _STRUCTURAL_KINDS else "corruption"
                result.findings.append(make_finding(category, "high", problem.message, byte_range=rng, region=region))

        with self._step("baseline"):
            changed, compared = self._compare_baseline(result, loaded, baseline)
        log.debug("check %s: %d integrity problem(s); baseline %s, %d changed range(s)", loaded.path,
                  len(report.problems) if report is not None else 0, compared, len(changed))
        baseline_changed = bool(changed) or compared == "different_grid"
        pixelrts_verified = hash_verified is True

        if integrity_critical:
            self._localise(result, loaded, changed, compared, anomaly)
            result.status, result.confidence = HealthStatus.CRITICAL, 0.99
            result.recommendation = self._restore_advice(result, loaded)
        elif pixelrts_verified and baseline is not None and (baseline_changed or self._new_data_hash(loaded, baseline)):
            span = (changed[0][0], changed[-1][1]) if changed else None
            total = sum(e - s for s, e in changed)
            result.findings.append(make_finding(
                "security", "high",
                "the image changed into another internally valid image (its data hash verifies but differs from the "
                f"baseline{'; ' + str(total) + ' stream bytes in ' + str(len(changed)) + ' range(s) differ' if changed else ''}): "
                "unexpected change, possible tampering",
                byte_range=span, region=range_region(span, loaded.grid_size) if span else None, source=SOURCE_BASELINE))
            result.status, result.confidence = HealthStatus.WARNING, 0.9
            result.recommendation = (f"review the change: accept it with `selfheal register {loaded.path} --accept-current` "
                                     f"(or a new `selfheal baseline`), or revert it with `selfheal heal {loaded.path}`")
        elif pixelrts_verified:
            result.status, result.confidence = HealthStatus.HEALTHY, 0.99
            result.recommendation = "no action required"
        elif compared == "same" or (compared == "compared" and not changed):
            # No data hash, but the baseline's block hashes prove the content unchanged.
            result.status, result.confidence = HealthStatus.HEALTHY, 0.95
            result.recommendation = "no action required (content matches the baseline block by block)"
        elif baseline_changed:
            # No data hash says the new content is valid, and the baseline proves it changed.
            self._range_findings(result, loaded, changed)
            result.status, result.confidence = HealthStatus.CRITICAL, 0.95
            result.recommendation = self._restore_advice(result, loaded)
        else:
            self._decide_by_statistics(result, loaded, stats, models, aggregation)
            return
        self._inform(result, loaded, stats, models, aggregation, decisive=False)

    @staticmethod
    def _new_data_hash(loaded: LoadedImage, baseline: dict[str, Any]) -> bool:
        then = baseline.get("data_hash")
        now = (loaded.metadata or {}).get("data_hash")
        return bool(then and now and str(then).lower() != str(now).lower())

    def _compare_baseline(self, result: HealthCheckResult, loaded: LoadedImage,
                          baseline: dict[str, Any] | None) -> tuple[list[tuple[int, int]], str]:
        """(changed ranges, how): how = none | same | compared | different_grid | no_stream."""
        from healing.analysis.baseline import changed_ranges, validate_baseline

        if baseline is None:
            return [], "none"
        validate_baseline(baseline)
        if loaded.stream is None or loaded.grid_size is None:
            result.findings.append(make_finding("structural", "medium",
                                                "the baseline cannot be compared: this PNG has no PixelRTS grid",
                                                source=SOURCE_BASELINE))
            return [], "no_stream"
        if baseline["grid_size"] != loaded.grid_size or baseline["stream_length"] != loaded.stream.size:
            result.findings.append(make_finding(
                "structural", "medium",
                f"the baseline was recorded for a {baseline['grid_size']}x{baseline['grid_size']} grid, "
                f"the image is {loaded.grid_size}x{loaded.grid_size}: blocks cannot be compared", source=SOURCE_BASELINE))
            return [], "different_grid"
        if loaded.file_sha256 and loaded.file_sha256 == baseline.get("file_sha256"):
            return [], "same"
        ranges = changed_ranges(loaded.stream, baseline)
        result.metrics["changed_bytes"] = sum(e - s for s, e in ranges)
        result.metrics["changed_ranges"] = len(ranges)
        return ranges, "compared"

    def _localise(self, result: HealthCheckResult, loaded: LoadedImage, changed: list[tuple[int, int]], compared: str,
                  anomaly: AnomalyReport) -> None:
        """Name the damaged places: baseline ranges when there is a baseline, else likely places."""
        if compared == "compared" and changed:
            self._range_findings(result, loaded, changed)
        elif compared != "compared":
            self._likely_places(result, anomaly)

    def _likely_places(self, result: HealthCheckResult, anomaly: AnomalyReport) -> None:
        """The drawn outliers as likely places (full-image regions and stream byte ranges), or why none is drawn."""
        for outlier in anomaly.outliers[:MAX_LIKELY_PLACES]:
            what = f"{outlier.kind} run: {outlier.reason}" if outlier.reason else "entropy outlier"
            result.findings.append(make_finding(
                "anomaly", "medium",
                f"likely place of the damage ({what}; not confirmed: no baseline): entropy "
                f"{outlier.entropy:.2f} bits/byte over {outlier.blocks} block(s), z = {outlier.zscore:+.1f}",
                byte_range=outlier.byte_range, region=outlier.region, source=SOURCE_STATISTICAL))
        self._withheld_finding(result, anomaly)

    def _withheld_finding(self, result: HealthCheckResult, anomaly: AnomalyReport) -> None:
        """Say that suspicious runs were found but, by calibration, are not drawn as likely places."""
        if not anomaly.withheld:
            return
        ranges = self.anomaly_model.ranges
        kinds = sorted({o.kind for o in anomaly.withheld})
        rates = ", ".join(f"{kind} {100 * ranges.hint_overlap(kind):.0f} %" for kind in kinds)
        result.findings.append(make_finding(
            "anomaly", "low",
            f"{len(anomaly.withheld)} suspicious run(s) found but no likely place drawn: on the calibration corpus "
            f"this detector's places overlapped the damage too rarely ({rates}; drawn from "
            f"{100 * ranges.min_hint_overlap:.0f} %)", source=SOURCE_STATISTICAL))

    @staticmethod
    def _range_findings(result: HealthCheckResult, loaded: LoadedImage, changed: list[tuple[int, int]]) -> None:
        assert loaded.grid_size is not None
        for start, end in changed[:MAX_RANGE_FINDINGS]:
            result.findings.append(make_finding(
                "corruption", "high", f"stream bytes [{start}, {end}) differ from the baseline",
                byte_range=(start, end), region=range_region((start, end), loaded.grid_size), source=SOURCE_BASELINE))
        if len(changed) > MAX_RANGE_FINDINGS:
            rest = changed[MAX_RANGE_FINDINGS:]
            result.findings.append(make_finding(
                "corruption", "high", f"{len(rest)} more damaged range(s), {sum(e - s for s, e in rest)} bytes in all",
                byte_range=(rest[0][0], rest[-1][1]), source=SOURCE_BASELINE))

    @staticmethod
    def _restore_advice(result: HealthCheckResult, loaded: LoadedImage) -> str:
        """A concrete next step for a critical image, naming what was found."""
        if any(f["category"] == "corruption" and "padding" in f["description"] for f in result.findings):
            return (f"bytes were written after the payload (padding must be zero): restore the image with "
                    f"`selfheal heal {loaded.path}` and investigate how it was modified")
        located = [f for f in result.findings if f["source"] == SOURCE_BASELINE and f["category"] == "corruption"]
        if located:
            first = located[0]["byte_range"]
            return (f"restore the image from its golden copy with `selfheal heal {loaded.path}`; "
                    f"{len(located)} damaged range(s) located, the first at stream bytes [{first[0]}, {first[1]})")
        return (f"restore the image from its golden copy with `selfheal heal {loaded.path}`; record a baseline "
                "(`selfheal baseline`) so that the next check can name the damaged blocks")

    # ------------------------------------------------------------------ providers

    def _context(self, loaded: LoadedImage, stats: Assessment, result: HealthCheckResult, *, full_pixels: bool) -> Any:
        from healing.analysis.overlays import entropy_heatmap
        from healing.vision import AnalysisContext

        small = stats.small
        overlay = entropy_heatmap(stats.entropy.image, (small.shape[1], small.shape[0]))
        result.analysis["overlay"] = overlay
        # Model providers downscale the full picture themselves and map regions in its coordinates;
        # the offline statistical provider only reads the numbers, so it does not need the pixels.
        return AnalysisContext(
            image_path=loaded.path, pixels=loaded.pixels if full_pixels else small, grid_size=loaded.grid_size, overlay=overlay,
            metadata=loaded.metadata, metrics=dict(result.metrics),
            outliers=[{"region": list(o.region), "entropy": o.entropy, "zscore": o.zscore}
                      for o in stats.anomaly.outliers],
        )

    def _run(self, loaded: LoadedImage, stats: Assessment, result: HealthCheckResult,
             models: str | Sequence[str] | None, aggregation: str) -> Any:
        from healing.vision.ensemble import aggregate, run_providers

        providers = self.providers_for(models)
        needs_pixels = any(getattr(p, "name", "statistical") != "statistical" for p in providers)
        log.debug("check %s: asking %s (%s)", loaded.path, ", ".join(getattr(p, "name", "?") for p in providers) or "no provider",
                  aggregation)
        with self._step("providers"):
            results = run_providers(providers, self._context(loaded, stats, result, full_pixels=needs_pixels))
        result.providers = results
        weights = dict(self.settings.vision_model.weights)
        if self.__dict__.get("_vision_ensemble") is not None:
            weights.update(self._model_ensemble().weights)  # add_model(weight=...) wins over the config
        ensemble = aggregate(results, aggregation, weights)
        for r in results:
            log.debug("check %s: provider %s: %s", loaded.path, r.provider,
                      f"{r.status} (confidence {r.confidence:.2f}, {len(r.findings)} finding(s))" if r.ok else r.error)
        result.agreement = round(ensemble.agreement, 4)
        result.metrics["providers"] = [r.provider for r in results]
        errors = ensemble.errors
        if errors:
            result.metrics["provider_errors"] = errors
        return ensemble

    def _inform(self, result: HealthCheckResult, loaded: LoadedImage, stats: Assessment,
                models: str | Sequence[str] | None, aggregation: str, *, decisive: bool) -> None:
        """Run the providers when a model was asked for; their findings inform but do not decide here."""
        names = models if models is not None else self._models
        if names is None and self._providers is None and self.__dict__.get("_vision_ensemble") is None:
            return  # integrity decided and no model was asked for: the statistics are in the metrics
        ensemble = self._run(loaded, stats, result, models, aggregation)
        for finding in ensemble.findings:
            if finding.source == SOURCE_STATISTICAL:
                continue  # the statistics already appear as metrics and, for damage, as likely places
            data = finding.to_dict()
            data["severity"] = "low"
            data["description"] = f"{data['description']} (informational: integrity decides this image)"
            result.findings.append(data)

    def _decide_by_statistics(self, result: HealthCheckResult, loaded: LoadedImage, stats: Assessment,
                              models: str | Sequence[str] | None, aggregation: str) -> None:
        ensemble = self._run(loaded, stats, result, models, aggregation)
        why = "plain PNG without PixelRTS metadata"
        score = result.metrics["anomaly_score"]
        for finding in ensemble.findings:
            if finding.source == SOURCE_STATISTICAL and finding.region is not None:
                # The statistical provider saw the downscaled picture, so its boxes are clamped to it;
                # the likely places are drawn below from the outliers, in full-image coordinates.
                continue
            result.findings.append(finding.to_dict())
        self._likely_places(result, stats.anomaly)
        if ensemble.status == "unknown":
            result.status, result.confidence = HealthStatus.UNKNOWN, 0.0
            result.findings.append(make_finding("anomaly", "low", f"{why}: no hash can decide and no provider answered "
                                                f"({'; '.join(ensemble.errors) or 'no provider'})", source=SOURCE_STATISTICAL))
            result.recommendation = "integrity cannot be judged: re-encode the image as PixelRTS with metadata, or record a baseline"
            return
        result.status = HealthStatus(ensemble.status)
        result.confidence = round(min(STATISTICAL_CONFIDENCE_CAP, ensemble.confidence), 4)
        result.findings.append(make_finding(
            "anomaly", "low" if ensemble.status == "healthy" else "medium",
            f"{why}: no hash can decide, so statistics did — anomaly score {score:.2f} against warning "
            f"{self.warning_threshold:.2f} / critical {self.critical_threshold:.2f}", source=SOURCE_STATISTICAL))
        if result.status == HealthStatus.HEALTHY:
            result.recommendation = ("no action required by statistics; to prove integrity, encode the image as PixelRTS "
                                     "(`selfheal encode`) or record a baseline (`selfheal baseline`)")
        else:
            result.recommendation = (f"inspect the flagged regions of {loaded.path}; if it has a golden copy, compare or "
                                     "restore it (`selfheal heal`); statistics cannot prove damage — a baseline or a "
                                     "PixelRTS data hash can")


class _Step:
    """Times one step of a check into ``steps`` (a dict, or None when the check is not verbose)."""

    def __init__(self, name: str, steps: dict[str, float] | None) -> None:
        self.name, self.steps = name, steps

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.steps is not None:
            self.steps[self.name] = self.steps.get(self.name, 0.0) + (time.perf_counter() - self.started) * 1000


def _enable_debug_logging() -> None:
    """``debug=True``: the checker logs at DEBUG; to stderr unless the application configured logging."""
    log.setLevel(logging.DEBUG)
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
        log.addHandler(handler)
