"""The ``api:`` section of the configuration, validated like the rest of healing.config.

Keys (YAML ``api:`` section; defaults in parentheses):
  public_health      (true)   GET /health answers without a token (load balancers, monitors)
  public_metrics     (true)   GET /metrics answers without a token (Prometheus)
  allowed_endpoints  ([])     model URLs (http(s), no credentials) that POST /api/v1/health-check may name in
                              ``endpoint`` besides the one configured for the named model; nothing else is
                              ever contacted on a client's behalf
  max_batch_files    (16)     files one POST /api/v1/batch may carry
  max_json_kb        (256)    largest body of a request without an upload (JSON bodies, forms)
  max_page_size      (1000)   largest ``limit`` of a listing

Upload limits are the dashboard's, so both doors of the product refuse the same files:
``dashboard.max_upload_mb`` (bytes of one file), ``dashboard.max_upload_pixels`` (declared PNG
dimensions, capped by ``pixelrts.max_pixels``), ``pixelrts.max_metadata_bytes`` (text chunks), and
``dashboard.csv_export_max`` (rows of one audit export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from healing.config import Settings, _as_bool, _as_number
from healing.errors import ConfigError


@dataclass(frozen=True)
class ApiSettings:
    public_health: bool = True
    public_metrics: bool = True
    allowed_endpoints: tuple[str, ...] = ()
    max_batch_files: int = 16
    max_json_kb: int = 256
    max_page_size: int = 1000
    # shared with the dashboard (see the module docstring)
    max_upload_mb: int = 50
    max_upload_pixels: int = 4096 * 4096
    max_metadata_bytes: int = 1 << 20
    export_max: int = 100_000
    chain_verify_max_age_s: float = 300.0

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_json_bytes(self) -> int:
        return self.max_json_kb * 1024


def api_settings(settings: Settings) -> ApiSettings:
    """Parse ``settings.section("api")`` (and the shared dashboard limits); ConfigError names a bad key."""
    from dashboard.config import dashboard_settings
    from healing.vision.selection import validate_endpoint

    section: dict[str, Any] = settings.section("api")
    unknown = sorted(set(section) - {"public_health", "public_metrics", "allowed_endpoints", "max_batch_files",
                                     "max_json_kb", "max_page_size"})
    if unknown:
        raise ConfigError(f"config: api.{unknown[0]} is not a known key (known: public_health, public_metrics, "
                          "allowed_endpoints, max_batch_files, max_json_kb, max_page_size)")
    defaults = ApiSettings()
    allowed = section.get("allowed_endpoints") or []
    if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
        raise ConfigError("config: api.allowed_endpoints must be a list of http(s) URLs")
    dash = dashboard_settings(settings)
    return ApiSettings(
        public_health=_as_bool("api.public_health", section.get("public_health", defaults.public_health)),
        public_metrics=_as_bool("api.public_metrics", section.get("public_metrics", defaults.public_metrics)),
        allowed_endpoints=tuple(validate_endpoint(a, "config: api.allowed_endpoints") for a in allowed),
        max_batch_files=_as_number("api.max_batch_files", section.get("max_batch_files", defaults.max_batch_files), int, 1, 1000),
        max_json_kb=_as_number("api.max_json_kb", section.get("max_json_kb", defaults.max_json_kb), int, 1, 1 << 20),
        max_page_size=_as_number("api.max_page_size", section.get("max_page_size", defaults.max_page_size), int, 10, 100_000),
        max_upload_mb=dash.max_upload_mb,
        max_upload_pixels=dash.max_upload_pixels,
        max_metadata_bytes=settings.pixelrts.max_metadata_bytes,
        export_max=dash.csv_export_max,
        chain_verify_max_age_s=dash.chain_verify_max_age_s,
    )
