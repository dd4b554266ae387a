"""JSON over HTTP for the model providers: timeouts, bounded retries, one-line redacted errors.

Only answers that say "try again" are retried — 429 and 5xx (and a connection dropped mid-answer) —
honouring ``Retry-After`` (seconds or an HTTP date), otherwise backing off exponentially; every wait
is capped so that one slow provider cannot hold a health check for minutes. A refused connection or
a timeout is not retried: the model is not there (or too slow) and retrying only delays the check.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from healing import redaction

log = logging.getLogger("healing.vision")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ERROR_BODY_CHARS = 160


class VisionRequestError(Exception):
    """A request to a model endpoint failed; the message is one redacted line."""

    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass
class RetryPolicy:
    """How often and how long to retry. ``sleep`` and ``now`` are injectable so tests do not wait."""

    max_retries: int = 3
    backoff: float = 0.5  # first wait without Retry-After; doubles each retry
    max_wait: float = 30.0  # no single wait is longer, whatever Retry-After says
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC), repr=False)

    def wait_for(self, retry: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        wait = parse_retry_after(retry_after, self.now()) if retry_after else None
        if wait is None:
            wait = self.backoff * (2 ** (retry - 1))
        return max(0.0, min(self.max_wait, wait))


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date; None when unreadable."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` without any configured secret nor any of ``secrets`` (case-insensitive), on one line."""
    return " ".join(redaction.redact(text, secrets).split())


def request_json(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    endpoint: str,
    headers: Mapping[str, str],
    payload: Any = None,
    timeout: float,
    policy: RetryPolicy,
    secrets: Iterable[str | None] = (),
) -> tuple[Any, int]:
    """Send one request with retries; return (decoded JSON body, attempts made).

    Raises VisionRequestError with a one-line message that never contains a secret.
    """
    secrets = tuple(secrets)
    attempt = 0
    while True:
        attempt += 1
        try:
            response = client.request(method, url, headers=dict(headers), json=payload, timeout=timeout)
        except httpx.ConnectError:
            raise VisionRequestError(f"Vision model not available at {endpoint} (connection failed)", attempt) from None
        except httpx.TimeoutException:
            raise VisionRequestError(f"no answer from {url} within {timeout:g} s (timeout)", attempt) from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if attempt > policy.max_retries:
                reason = redact(str(exc), secrets) or type(exc).__name__
                raise VisionRequestError(f"connection to {url} broke after {attempt} attempts: {reason}", attempt) from None
            _pause(policy, attempt, None, url, type(exc).__name__)
            continue
        except httpx.HTTPError as exc:
            reason = redact(str(exc), secrets) or type(exc).__name__
            raise VisionRequestError(f"request to {url} failed: {reason}", attempt) from None

        if response.status_code in RETRY_STATUSES and attempt <= policy.max_retries:
            _pause(policy, attempt, response.headers.get("retry-after"), url, f"HTTP {response.status_code}")
            continue
        if response.status_code >= 400:
            detail = _error_detail(response, secrets)
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            raise VisionRequestError(f"HTTP {response.status_code} from {url}{tries}{detail}", attempt)
        try:
            return response.json(), attempt
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VisionRequestError(f"answer from {url} is not JSON", attempt) from None


def _pause(policy: RetryPolicy, attempt: int, retry_after: str | None, url: str, why: str) -> None:
    wait = policy.wait_for(attempt, retry_after)
    log.info("vision model at %s answered %s; retry %d/%d in %.1f s", url, why, attempt, policy.max_retries, wait)
    policy.sleep(wait)


def _error_detail(response: httpx.Response, secrets: tuple[str | None, ...]) -> str:
    """A short reason from an error body: the API's error message if it has one, else the text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error or body.get("message")
    if not isinstance(message, str):
        message = response.text
    message = redact(message or "", secrets)
    if len(message) > MAX_ERROR_BODY_CHARS:
        message = message[: MAX_ERROR_BODY_CHARS - 1] + "…"
    return f": {message}" if message else ""
