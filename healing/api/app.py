"""The FastAPI application: ``create_app(settings=None)``.

Wires the routers (healing.api.guide, healing.api.operator), /metrics, the body-size limit
(healing.api.limits), the one-line JSON errors (healing.api.errors) and the settings. The schema is
brought to head once here, so a fresh SELFHEAL_HOME serves at once.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from healing.api import guide, operator
from healing.api.auth import Credentials, TokenGate, caller
from healing.api.errors import ERROR_RESPONSES, install_handlers
from healing.api.limits import BodyLimit
from healing.api.metrics import ChainStatus, DatabaseCollector, render
from healing.api.settings import ApiSettings, api_settings
from healing.config import Settings, load_settings

UPLOAD_OVERHEAD = 64 * 1024  # multipart boundaries, headers and the small form fields around a file
UPLOAD_PATHS = ("/api/v1/analyze", "/api/v1/health-check", "/api/v1/tune/observe")
DESCRIPTION = """\
The image guide's REST API (`/health`, `/api/v1/models`, `/api/v1/analyze`, `/api/v1/batch`,
`/api/v1/health-check`) and the operator workflows of selfheal (images, run-now requests, promotions,
tuning, audit), with Prometheus metrics at `/metrics`.

Every endpoint except `/health` and `/metrics` needs `Authorization: Bearer TOKEN`; create a token with
`selfheal api token create NAME --role viewer|operator`. Errors answer `{"success": false, "error": "…"}`.
"""


def body_limits(api: ApiSettings) -> Any:
    """``limit_for(method, path)`` for the BodyLimit middleware: (bytes, what is limited)."""
    single = api.max_upload_bytes + UPLOAD_OVERHEAD
    batch = api.max_upload_bytes * api.max_batch_files + UPLOAD_OVERHEAD * api.max_batch_files

    def limit_for(_method: str, path: str) -> tuple[int, str]:
        if path == "/api/v1/batch":
            return batch, f"api.max_batch_files × dashboard.max_upload_mb: {api.max_batch_files} × {api.max_upload_mb} MiB"
        if path in UPLOAD_PATHS:
            return single, f"dashboard.max_upload_mb: {api.max_upload_mb} MiB"
        return api.max_json_bytes, f"api.max_json_kb: {api.max_json_kb} KiB"

    return limit_for


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over the configured database (``settings`` default: load_settings())."""
    from prometheus_client import CollectorRegistry

    from healing.api.guide import version
    from storage.migrate import upgrade

    settings = settings or load_settings()
    api = api_settings(settings)
    upgrade()
    app = FastAPI(title="selfheal API", version=version(), description=DESCRIPTION)
    app.state.settings = settings
    app.state.api = api
    app.state.chain = ChainStatus(api.chain_verify_max_age_s)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(settings, app.state.chain))
    app.state.registry = registry
    install_handlers(app)
    app.include_router(guide.router)
    app.include_router(operator.router)

    async def metrics_access(request: Request, credentials: Credentials) -> None:
        if not request.app.state.api.public_metrics:
            await caller(request, credentials)

    @app.get("/metrics", tags=["monitoring"], response_class=Response, dependencies=[Depends(metrics_access)],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"},
                        401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]})
    async def metrics(request: Request) -> Response:
        """Prometheus metrics read from the database at each scrape (see healing/api/metrics.py)."""
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.concurrency import run_in_threadpool

        return Response(await run_in_threadpool(render, request.app.state.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit_for=body_limits(api))
    app.add_middleware(TokenGate)  # outermost: no token, no body read
    return app
