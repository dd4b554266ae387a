"""Audit-chain verification off the page's critical path.

verify_chain walks every event (about 3 s for 100,000 events here), far over a page's render budget,
and the chain's head moves whenever the worker records anything. So each dashboard process keeps one
:class:`ChainVerifier` per database: a page asks for the latest report, which starts a verification
in a background thread when there is none or it is older than ``max_age_s``; the page shows the last
finished report (and that one is running) instead of waiting.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dashboard import data


class ChainVerifier:
    """Runs data.verify_audit_chain(url) in a background thread and keeps the latest report."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._finished_at = 0.0
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start a verification unless one is already running."""
        with self._lock:
            if self.running:
                return
            self._thread = threading.Thread(target=self._run, name="audit-verify", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            report = data.verify_audit_chain(self.url)
            error = None
        except Exception as exc:  # a database error must reach the page as a line, not kill the thread silently
            report, error = None, " ".join(str(exc).split()) or type(exc).__name__
        with self._lock:
            if report is not None:
                self._report = report
            self._error = error
            self._finished_at = time.monotonic()

    def latest(self, *, max_age_s: float = 300.0, wait_s: float = 0.0) -> dict[str, Any]:
        """{"report": last finished report or None, "running": bool, "error": str | None}.

        Starts a verification when the last one is older than ``max_age_s`` (or there is none). With no
        report yet, waits up to ``wait_s`` for it: small chains finish within that and show at once.
        """
        stale = self._report is None or time.monotonic() - self._finished_at > max_age_s
        if stale and not self.running:
            self.start()
        thread = self._thread
        if wait_s > 0 and thread is not None and self._report is None:
            thread.join(wait_s)
        with self._lock:
            return {"report": self._report, "running": self.running, "error": self._error}
