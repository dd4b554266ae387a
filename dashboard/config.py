"""The ``dashboard`` section of the settings, validated like the rest of healing.config.

Keys (YAML ``dashboard:`` section; defaults in parentheses):
  max_upload_mb      (50)    largest upload the Analyze page accepts, checked on the server; also
                             passed to Streamlit as server.maxUploadSize by `selfheal dashboard`
  max_upload_pixels  (16777216 = 4096²) largest declared PNG dimensions analysed in the dashboard
                             process; never more than pixelrts.max_pixels
  refresh_s          (10)    how often the Overview's live panels refresh
  page_size          (50)    audit events per page
  worker_stale_s     (120)   a heartbeat older than this shows the worker as not running
  csv_export_max     (100000) most audit rows one CSV export holds
  chain_verify_max_age_s (300) the Audit page re-verifies the hash chain (in the background) when
                             its last verification is older than this
  login_max_failures (5)     failed logins in a streak (per operator name and per client) before a lock
  login_window_s     (900)   a failure within this many seconds of the previous one continues the streak
  login_lock_s       (60)    the first lock; each further failure doubles it ...
  login_lock_max_s   (3600)  ... up to this
  export_ttl_s       (60)    a generated export (audit CSV, upload report) is served at its download
                             URL for at most this long, and never after its session logs out
  session_ttl_s      (28800) a password login survives page reloads for this long (dashboard.auth
                             session tokens), never after logout or a dashboard restart
  worker_stale_s is the fallback only: a worker that says its heartbeat interval counts as down after
  two missed beats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dashboard.throttle import ThrottlePolicy
from healing.config import Settings, _as_number
from healing.errors import ConfigError


@dataclass(frozen=True)
class DashboardSettings:
    max_upload_mb: int = 50
    max_upload_pixels: int = 4096 * 4096
    refresh_s: float = 10.0
    page_size: int = 50
    worker_stale_s: float = 120.0
    csv_export_max: int = 100_000
    chain_verify_max_age_s: float = 300.0
    login_max_failures: int = 5
    login_window_s: float = 900.0
    login_lock_s: float = 60.0
    login_lock_max_s: float = 3600.0
    export_ttl_s: float = 60.0
    session_ttl_s: float = 8 * 3600.0

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def throttle(self) -> ThrottlePolicy:
        return ThrottlePolicy(self.login_max_failures, self.login_window_s, self.login_lock_s, self.login_lock_max_s)


def dashboard_settings(settings: Settings) -> DashboardSettings:
    """Parse ``settings.section("dashboard")``; a bad value raises ConfigError naming the key."""
    section: dict[str, Any] = settings.section("dashboard")
    defaults = DashboardSettings()
    pixels = _as_number("dashboard.max_upload_pixels", section.get("max_upload_pixels", defaults.max_upload_pixels), int, 1)

    def number(key: str, kind: type, lo: float, hi: float | None = None) -> Any:
        return _as_number(f"dashboard.{key}", section.get(key, getattr(defaults, key)), kind, lo, hi)

    lock_s, lock_max_s = number("login_lock_s", float, 1, 86400), number("login_lock_max_s", float, 1, 30 * 86400)
    if lock_max_s < lock_s:
        raise ConfigError("config: dashboard.login_lock_max_s must not be less than dashboard.login_lock_s")
    return DashboardSettings(
        max_upload_mb=_as_number("dashboard.max_upload_mb", section.get("max_upload_mb", defaults.max_upload_mb), int, 1, 4096),
        # The codec's own limit is the ceiling: the dashboard may be stricter, never looser.
        max_upload_pixels=min(pixels, settings.pixelrts.max_pixels),
        refresh_s=_as_number("dashboard.refresh_s", section.get("refresh_s", defaults.refresh_s), float, 1, 3600),
        page_size=_as_number("dashboard.page_size", section.get("page_size", defaults.page_size), int, 5, 1000),
        worker_stale_s=_as_number("dashboard.worker_stale_s", section.get("worker_stale_s", defaults.worker_stale_s), float, 5),
        csv_export_max=_as_number("dashboard.csv_export_max", section.get("csv_export_max", defaults.csv_export_max), int, 1),
        chain_verify_max_age_s=_as_number("dashboard.chain_verify_max_age_s",
                                          section.get("chain_verify_max_age_s", defaults.chain_verify_max_age_s), float, 0),
        login_max_failures=number("login_max_failures", int, 1, 1000),
        login_window_s=number("login_window_s", float, 1, 30 * 86400),
        login_lock_s=lock_s,
        login_lock_max_s=lock_max_s,
        export_ttl_s=number("export_ttl_s", float, 1, 3600),
        session_ttl_s=number("session_ttl_s", float, 60, 7 * 86400),
    )
