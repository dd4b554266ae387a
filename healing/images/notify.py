"""Alert delivery to the configured webhook (``healing.notification``), off the check path.

Alerts are always written to the database first (storage.queries.record_alert with webhook=True marks
them "pending"). A :class:`WebhookNotifier` delivers them from a background thread: a JSON POST per
alert through httpx, retried with a short backoff, the outcome recorded on the alert row
(webhook_state delivered/failed, attempts, last error). A slow or dead webhook therefore never delays
a check. The payload carries the alert's own fields only, never configuration or secrets, and errors
are recorded without the webhook URL (it may embed a token).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from healing.config import NotificationSettings

log = logging.getLogger("selfheal.notify")

PAYLOAD_FIELDS = ("id", "kind", "severity", "subject", "reason", "message", "created_at")


def alert_payload(alert: dict[str, Any]) -> dict[str, Any]:
    """The JSON document POSTed for one alert."""
    body = {k: alert.get(k) for k in PAYLOAD_FIELDS}
    created = body.get("created_at")
    if created is not None and hasattr(created, "isoformat"):
        body["created_at"] = created.isoformat()
    body["source"] = "selfheal"
    return body


class WebhookNotifier:
    """Background delivery of pending alerts; ``submit`` never blocks, ``flush`` waits (bounded)."""

    def __init__(self, settings: NotificationSettings, *, client_factory: Callable[[], Any] | None = None,
                 backoff_s: float = 0.5) -> None:
        self.settings = settings
        self.backoff_s = backoff_s
        self._client_factory = client_factory
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.enabled and self.settings.webhook)

    def submit(self, alert_id: int) -> None:
        """Queue one alert for delivery (no-op when no webhook is configured)."""
        if not self.enabled:
            return
        self._ensure_thread()
        self._queue.put(alert_id)

    def submit_pending(self) -> int:
        """Queue every alert still marked pending in the database (after a restart); returns how many."""
        if not self.enabled:
            return 0
        from storage import queries
        from storage.engine import session_scope

        with session_scope(write=False) as session:
            ids = [a["id"] for a in queries.pending_webhook_alerts(session, limit=500)]
        for alert_id in ids:
            self.submit(alert_id)
        return len(ids)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is drained (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded by ``timeout``) and stop the thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout=1.0)
        self._thread = None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="selfheal-webhook", daemon=True)
                self._thread.start()

    def _client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        import httpx

        return httpx.Client(timeout=self.settings.timeout, follow_redirects=False)

    def _run(self) -> None:
        client = self._client()
        try:
            while True:
                alert_id = self._queue.get()
                try:
                    if alert_id is None:
                        return
                    self._deliver(client, alert_id)
                except Exception as exc:  # a broken alert row must not kill the delivery thread
                    log.warning("webhook delivery of alert %s failed: %s", alert_id, type(exc).__name__)
                finally:
                    self._queue.task_done()
        finally:
            client.close()

    def _deliver(self, client: Any, alert_id: int) -> None:
        from storage import queries
        from storage.engine import session_scope
        from storage.models import Alert

        with session_scope(write=False) as session:
            alert = session.get(Alert, alert_id)
            if alert is None or alert.webhook_state == "delivered":
                return
            body = alert_payload(alert.model_dump())
        for attempt in range(self.settings.retries + 1):
            error = self._post_once(client, body)
            # Every attempt is recorded, so the row shows how many tries a delivery took.
            with session_scope() as session:
                queries.mark_alert_delivery(session, alert_id, delivered=error is None, error=error)
            if error is None:
                return
            if attempt < self.settings.retries:
                time.sleep(self.backoff_s * (2 ** attempt))
        log.warning("webhook delivery of alert %s failed after %d attempts: %s", alert_id, self.settings.retries + 1, error)

    def _post_once(self, client: Any, body: dict[str, Any]) -> str | None:
        import httpx

        try:
            response = client.post(self.settings.webhook, json=body)
        except httpx.HTTPError as exc:
            # str(exc) of a connect error can contain the URL; keep only the class and the reason.
            return f"{type(exc).__name__}: {_strip_url(str(exc), self.settings.webhook)}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


def _strip_url(text: str, url: str | None) -> str:
    from healing.redaction import redact, url_secrets

    if url:
        text = text.replace(url, "<webhook>")
    # The exact URL is not the only form it takes: a token re-encoded or in another case goes too.
    return " ".join(redact(text, url_secrets(url)).split())[:200]
