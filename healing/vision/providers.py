"""The vision providers: OpenAI-compatible chat completions, Anthropic Messages, and statistics.

Every provider turns an :class:`AnalysisContext` into a :class:`ProviderResult` and never raises:
a model that is down, slow, rate limited or talking nonsense yields a failed result with one line
saying which provider failed and why, and the rest of the check stands.

API keys live only in the provider object (hidden from ``repr``) and in the request headers; every
text of a result (error, summary, findings) is redacted of every configured secret before it is stored.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from healing.errors import SelfHealError
from healing.redaction import default_redactor
from healing.vision._http import RetryPolicy, VisionRequestError, redact, request_json
from healing.vision._types import AnalysisContext, EntropyOutlier, Finding, ProviderResult
from healing.vision.parsing import MAX_FINDINGS, ParsedAnswer, parse_answer
from healing.vision.prompt import SYSTEM_PROMPT, PreparedImage, build_prompt, prepare_image
from healing.vision.regions import clamp_region, region_byte_ranges

log = logging.getLogger("healing.vision")

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

class VisionModelError(SelfHealError):
    """A vision model asked directly (``ask``) could not answer; the message is one redacted line (exit 3)."""


_SEVERITY_TO_STATUS = {"high": "critical", "medium": "warning", "low": "healthy"}
_STATUS_RANK = {"healthy": 0, "warning": 1, "critical": 2}


def status_from_findings(findings: Sequence[Finding]) -> str:
    """A model's status suggestion: its worst finding decides (high → critical, medium → warning).

    Low-severity findings are informational and leave the suggestion at healthy.
    """
    status = "healthy"
    for finding in findings:
        candidate = _SEVERITY_TO_STATUS.get(finding.severity, "warning")
        if _STATUS_RANK[candidate] > _STATUS_RANK[status]:
            status = candidate
    return status


def findings_with_byte_ranges(parsed: ParsedAnswer, source: str, context: AnalysisContext) -> list[Finding]:
    """Parsed findings as :class:`Finding` objects, each region mapped to bytes when the image is a grid."""
    grid = _grid_of(context)
    return [
        Finding(
            category=p.category,
            severity=p.severity,
            description=p.description,
            source=source,
            region=p.region,
            byte_ranges=region_byte_ranges(p.region, grid) if p.region and grid else (),
        )
        for p in parsed.findings
    ]


def _grid_of(context: AnalysisContext) -> int | None:
    """The grid size when the pixels really are an n×n PixelRTS grid, else None (no byte order)."""
    n = context.grid_size
    if not n or n & (n - 1) or context.image_size != (n, n):
        return None
    return n


# --------------------------------------------------------------------------- HTTP providers

class HTTPVisionProvider(abc.ABC):
    """Common machinery of the providers that ask a model over HTTP; subclasses speak one API in ``_ask``."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        requires_key: bool = False,
        key_hint: str = "",
        timeout: float = 30.0,
        max_retries: int = 3,
        max_size: int = 512,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = 30.0,
    ) -> None:
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self._api_key = api_key or None
        self.requires_key = requires_key
        self.key_hint = key_hint
        self.timeout = timeout
        self.max_size = max_size
        self.max_tokens = max_tokens
        self._client = client
        self.policy = RetryPolicy(max_retries=max_retries, sleep=sleep, max_wait=max_wait)

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    def __repr__(self) -> str:  # the key is never part of any text this object produces
        key = "set" if self._api_key else "none"
        return f"{type(self).__name__}(name={self.name!r}, endpoint={self.endpoint!r}, model={self.model!r}, api_key={key})"

    __str__ = __repr__

    def analyze(self, context: AnalysisContext) -> ProviderResult:
        """Ask the model about ``context``; a failure of any kind comes back as a failed result.

        Every text of the result — the error line, the model's summary and finding descriptions — is
        redacted of every configured secret (and this provider's key) here, before anyone stores,
        logs or shows it: a model may quote the key it was called with, a proxy may echo it.
        """
        return self._redacted(self._analyze(context))

    def _redacted(self, result: ProviderResult) -> ProviderResult:
        clean = default_redactor().with_secrets([self._api_key])
        result.error = clean(result.error) if result.error else result.error
        result.summary = clean(result.summary)
        for finding in result.findings:
            finding.description = clean(finding.description)
        return result

    def ask(self, context: AnalysisContext) -> str:
        """The model's answer to ``context`` as text (redacted), for callers that read it themselves.

        Raises :class:`VisionModelError` — one line naming the provider, its endpoint and the reason —
        when the model cannot answer (no key, unreachable, HTTP error, no text in the answer).
        """
        if self.requires_key and not self._api_key:
            raise VisionModelError(f"vision model {self.name} not available: no API key ({self.key_hint})")
        try:
            text, _ = self._exchange(context)
        except VisionRequestError as exc:
            reason = redact(str(exc), [self._api_key])
            raise VisionModelError(f"vision model {self.name} not available at {self.endpoint}: {reason}") from None
        except Exception as exc:  # one line for the caller, whatever went wrong underneath
            reason = redact(f"{type(exc).__name__}: {exc}", [self._api_key])
            raise VisionModelError(f"vision model {self.name} not available at {self.endpoint}: {reason}") from None
        return default_redactor().with_secrets([self._api_key])(text)

    def _exchange(self, context: AnalysisContext) -> tuple[str, int]:
        """Prepare the pictures and the prompt, send them; (answer text, HTTP attempts). Raises on failure."""
        image = prepare_image(context.pixels, self.max_size)
        overlay = prepare_image(context.overlay, self.max_size) if context.overlay is not None else None
        prompt = build_prompt(context, image, overlay)
        if self._client is not None:
            return self._ask(self._client, prompt, image, overlay)
        with httpx.Client() as client:
            return self._ask(client, prompt, image, overlay)

    def _analyze(self, context: AnalysisContext) -> ProviderResult:
        started = time.monotonic()
        attempts = 0

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        if self.requires_key and not self._api_key:
            return ProviderResult.failure(self.name, f"no API key ({self.key_hint})", model=self.model)
        try:
            text, attempts = self._exchange(context)
        except VisionRequestError as exc:
            log.warning("%s: %s", self.name, redact(str(exc), [self._api_key]))
            return ProviderResult.failure(self.name, str(exc), model=self.model, attempts=exc.attempts,
                                          duration_ms=elapsed())
        except Exception as exc:  # a provider must never take the check down with it
            reason = redact(f"{type(exc).__name__}: {exc}", [self._api_key])
            log.warning("%s: unexpected failure: %s", self.name, reason)
            return ProviderResult.failure(self.name, f"unexpected failure: {reason}", model=self.model,
                                          attempts=attempts, duration_ms=elapsed())

        parsed = parse_answer(text, context.image_size)
        if parsed is None:
            return ProviderResult.failure(
                self.name, "answer could not be read (no JSON object and no findings list)",
                model=self.model, attempts=attempts, duration_ms=elapsed(),
            )
        findings = findings_with_byte_ranges(parsed, self.name, context)
        return ProviderResult(
            provider=self.name, ok=True, status=status_from_findings(findings), confidence=parsed.confidence,
            summary=parsed.summary, findings=findings, model=self.model, answer_format=parsed.answer_format,
            attempts=attempts, duration_ms=elapsed(),
        )

    def _request(self, client: httpx.Client, method: str, url: str, headers: dict[str, str],
                 payload: Any = None) -> tuple[Any, int]:
        return request_json(client, method, url, endpoint=self.endpoint, headers=headers, payload=payload,
                            timeout=self.timeout, policy=self.policy, secrets=[self._api_key])

    @abc.abstractmethod
    def _ask(self, client: httpx.Client, prompt: str, image: PreparedImage,
             overlay: PreparedImage | None) -> tuple[str, int]:
        """Send the request; return (the model's answer text, HTTP attempts made)."""


class OpenAICompatibleProvider(HTTPVisionProvider):
    """``POST {endpoint}/chat/completions`` with ``image_url`` parts (LM Studio, Ollama, vLLM, OpenAI).

    When no model name is configured and ``discover_model`` is set, the first model listed by
    ``GET {endpoint}/models`` is used — what a local server has loaded.
    """

    def __init__(self, name: str, endpoint: str, *, discover_model: bool = False, **kwargs: Any) -> None:
        super().__init__(name, endpoint, **kwargs)
        self.discover_model = discover_model

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _ask(self, client: httpx.Client, prompt: str, image: PreparedImage,
             overlay: PreparedImage | None) -> tuple[str, int]:
        attempts = 0
        if self.model is None and self.discover_model:
            self.model, attempts = self._discover(client)
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for picture in (image, overlay):
            if picture is not None:
                content.append({"type": "image_url", "image_url": {"url": picture.data_url}})
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        url = f"{self.endpoint}/chat/completions"
        body, tries = self._request(client, "POST", url, self._headers(), payload)
        return _openai_text(body, url), attempts + tries

    def _discover(self, client: httpx.Client) -> tuple[str, int]:
        url = f"{self.endpoint}/models"
        body, tries = self._request(client, "GET", url, self._headers())
        models = body.get("data") if isinstance(body, dict) else None
        for entry in models or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
                return entry["id"], tries
        raise VisionRequestError(f"no model loaded at {self.endpoint} (GET /models listed none)", tries)


def _openai_text(body: Any, url: str) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise VisionRequestError(f"answer from {url} has no choices[0].message.content") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise VisionRequestError(f"answer from {url} has no text content")
    return content


class AnthropicProvider(HTTPVisionProvider):
    """``POST {endpoint}/v1/messages`` with base64 ``image`` blocks, ``x-api-key`` and ``anthropic-version``."""

    def __init__(self, name: str, endpoint: str, **kwargs: Any) -> None:
        # Operators often paste ".../v1"; the path below already carries it.
        endpoint = endpoint.rstrip("/")
        super().__init__(name, endpoint[:-3] if endpoint.endswith("/v1") else endpoint, **kwargs)

    def _ask(self, client: httpx.Client, prompt: str, image: PreparedImage,
             overlay: PreparedImage | None) -> tuple[str, int]:
        content: list[dict[str, Any]] = []
        for picture in (image, overlay):
            if picture is not None:
                content.append({"type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": picture.base64}})
        content.append({"type": "text", "text": prompt})
        payload = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": content}],
        }
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION,
                   "x-api-key": self._api_key or ""}
        url = f"{self.endpoint}/v1/messages"
        body, tries = self._request(client, "POST", url, headers, payload)
        blocks = body.get("content") if isinstance(body, dict) else None
        if not isinstance(blocks, list):
            raise VisionRequestError(f"answer from {url} has no content blocks", tries)
        text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        return text, tries


# --------------------------------------------------------------------------- statistical provider

class StatisticalProvider:
    """The offline provider: turns the analysis engine's numbers into a suggestion and findings.

    It adds no judgement of its own. The status follows ``anomaly_score`` against the configured
    thresholds (health_check.threshold.warning / critical); each entropy outlier becomes an anomaly
    finding whose severity follows its z-score; the confidence grows with the score's distance from
    the nearest threshold, relative to the width of the band it falls in: 0.5 on a threshold, 1.0 at
    a score of 0 or 1, and 1.0 midway between the two thresholds.
    """

    name = "statistical"

    def __init__(self, warning: float = 0.7, critical: float = 0.9, *, z_medium: float = 3.0,
                 z_high: float = 5.0) -> None:
        if not 0.0 <= warning <= critical <= 1.0:
            raise ValueError("statistical provider needs 0 ≤ warning ≤ critical ≤ 1")
        self.warning = warning
        self.critical = critical
        self.z_medium = z_medium
        self.z_high = z_high

    def __repr__(self) -> str:
        return f"StatisticalProvider(warning={self.warning}, critical={self.critical})"

    def analyze(self, context: AnalysisContext) -> ProviderResult:
        """Findings and a suggestion from ``context.metrics['anomaly_score']`` and ``context.outliers``."""
        score = context.metrics.get("anomaly_score")
        if isinstance(score, bool) or not isinstance(score, int | float) or score != score:
            return ProviderResult.failure(self.name, "no anomaly_score in the analysis results")
        score = min(1.0, max(0.0, float(score)))
        try:
            outliers = sorted(context.entropy_outliers(), key=lambda o: -abs(o.zscore or 0.0))
        except (KeyError, TypeError, ValueError):
            return ProviderResult.failure(self.name, "entropy outliers are malformed")
        status = "critical" if score >= self.critical else "warning" if score >= self.warning else "healthy"
        grid = _grid_of(context)
        width, height = context.image_size
        findings = [f for f in (self._outlier_finding(o, grid, width, height) for o in outliers[:MAX_FINDINGS]) if f]
        if status != "healthy" and not findings:
            threshold, label = (self.critical, "critical") if status == "critical" else (self.warning, "warning")
            findings.append(Finding(
                category="anomaly", severity="high" if status == "critical" else "medium", source=self.name,
                description=f"anomaly score {score:.2f} reaches the {label} threshold {threshold:.2f}",
            ))
        summary = (f"anomaly score {score:.2f} (warning {self.warning:.2f}, critical {self.critical:.2f}); "
                   f"{len(outliers)} entropy outlier block(s)")
        return ProviderResult(provider=self.name, ok=True, status=status, confidence=self.confidence(score),
                              summary=summary, findings=findings, answer_format="statistics")

    def confidence(self, score: float) -> float:
        """0.5 on a threshold, rising linearly to 1.0 at the far edge of the band the score lies in."""
        if score < self.warning:
            distance, band = self.warning - score, self.warning
        elif score < self.critical:
            middle = (self.warning + self.critical) / 2
            distance, band = min(score - self.warning, self.critical - score), self.critical - middle
        else:
            distance, band = score - self.critical, 1.0 - self.critical
        if band <= 0:
            return 1.0
        return round(0.5 + 0.5 * min(1.0, distance / band), 4)

    def _outlier_finding(self, outlier: EntropyOutlier, grid: int | None, width: int, height: int) -> Finding | None:
        region = clamp_region(outlier.region, width, height)
        if region is None:  # an outlier outside the image says nothing about it
            return None
        z = outlier.zscore
        if z is None:
            severity, z_text = "low", ""
        else:
            severity = "high" if abs(z) >= self.z_high else "medium" if abs(z) >= self.z_medium else "low"
            z_text = f", z = {z:+.1f}"
        x, y, w, h = region
        return Finding(
            category="anomaly", severity=severity, source=self.name, region=region,
            description=f"entropy {outlier.entropy:.2f} bits/byte in the {w}x{h} block at ({x}, {y}){z_text}",
            byte_ranges=region_byte_ranges(region, grid) if grid else (),
        )
