"""The image guide's endpoints, with the guide's shapes (seeds/vlm_self_healing_os_guide.md, REST API).

  GET  /health                 status, version, dependencies {pixelrts, vision_model, database}
  GET  /api/v1/models          the analysis methods and their parameters; the vision models uploads may use
  POST /api/v1/analyze         multipart ``file``, ``methods`` (JSON list), ``edge_method``, ``return_overlay``
  POST /api/v1/batch           ``files`` repeated, ``methods``, ``edge_method``
  POST /api/v1/health-check    ``file``, ``model``, ``endpoint`` → the checker's verdict

Analysis runs the same functions as `selfheal analyze` (healing.analysis.analyze_image); the check runs
the same checker as `selfheal check`, with the dashboard's upload limits. ``model`` may only name a
vision model on ``vision_model.upload_allowlist``; ``endpoint`` may only be the URL configured for
that model (or its built-in default) or one listed in ``api.allowed_endpoints``: the server never
sends an upload to a host a client chose.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from healing.api.auth import Credentials, Viewer, caller
from healing.api.errors import ERROR_RESPONSES, ApiError
from healing.api.settings import ApiSettings
from healing.api.uploads import hide_path, png_problem, read_upload, require_png, temporary_file
from healing.config import Settings

router = APIRouter()
METHODS = ("entropy", "edges", "fourier", "clusters")
OVERLAY_SIZE = 512  # longer side of an overlay picture sent back inline


class HealthResponse(BaseModel):
    status: str
    version: str
    dependencies: dict[str, str]


class ModelsResponse(BaseModel):
    success: bool
    models: dict[str, Any]
    vision_models: dict[str, Any]


class AnalyzeResponse(BaseModel):
    success: bool
    file: str
    image: dict[str, Any]
    analysis: dict[str, Any]


class BatchItem(BaseModel):
    file: str
    status: str
    analysis: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    success: bool
    results: list[BatchItem]


class CheckResponse(BaseModel):
    success: bool
    file: str
    models: list[str]
    status: str
    confidence: float
    metrics: dict[str, Any]
    findings: list[dict[str, Any]]
    recommendation: str | None
    timestamp: str | None
    duration_ms: float | None


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _api(request: Request) -> ApiSettings:
    return request.app.state.api


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("selfheal")
    except PackageNotFoundError:
        return "0+unknown"


async def health_access(request: Request, credentials: Credentials) -> None:
    """/health is open unless ``api.public_health`` is false; then any valid token may read it."""
    if not _api(request).public_health:
        await caller(request, credentials)


def _database_state() -> str:
    import sqlalchemy as sa

    from storage.engine import session_scope

    try:
        with session_scope(write=False) as session:
            session.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return "unavailable: " + " ".join(str(exc).split())[:200]
    return "ok"


@router.get("/health", response_model=HealthResponse, tags=["guide"], dependencies=[Depends(health_access)],
            responses={401: ERROR_RESPONSES[401], 503: {"model": HealthResponse, "description": "the database is unavailable"}})
async def health(request: Request) -> Any:
    """Liveness and dependencies, for load balancers and monitors: 200 healthy, 503 unhealthy."""
    from fastapi.responses import JSONResponse

    database = await run_in_threadpool(_database_state)
    body = {"status": "healthy" if database == "ok" else "unhealthy", "version": version(),
            "dependencies": {"pixelrts": "installed", "vision_model": _settings(request).vision_model.provider,
                             "database": database}}
    return JSONResponse(body, status_code=200 if database == "ok" else 503)


@router.get("/api/v1/models", response_model=ModelsResponse, tags=["guide"], responses=ERROR_RESPONSES)
async def models(request: Request, _who: Viewer) -> Any:
    """The analysis methods with their parameters (the guide's shape), and the vision models uploads may name."""
    vm = _settings(request).vision_model
    return {"success": True, "models": {
        "entropy": {"parameters": ["block_size"]},
        "edge_detection": {"methods": ["sobel", "canny"],
                           "parameters": {"sobel": ["threshold"], "canny": ["low_threshold", "high_threshold"]}},
        "fourier_analysis": {"parameters": ["max_frequencies"]},
        "clustering": {"parameters": ["eps", "min_samples", "feature_type"]},
    }, "vision_models": {"configured": vm.provider, "allowed": list(vm.upload_allowlist)}}


def parse_methods(text: str | None) -> tuple[str, ...]:
    """``methods``: a JSON list (the guide: '["edges", "fourier"]'), or one name; "all" means every method."""
    if text is None or not text.strip():
        return METHODS
    raw = text.strip()
    try:
        value = json.loads(raw) if raw.startswith("[") else [part.strip() for part in raw.split(",")]
    except ValueError:
        raise ApiError(400, "methods must be a JSON list such as [\"edges\", \"fourier\"]") from None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "methods must be a non-empty JSON list of names")
    names: list[str] = []
    for name in (v.strip().lower() for v in value):
        if name == "all":
            return METHODS
        if name not in METHODS:
            raise ApiError(400, f"unknown analysis method {name!r} (choose from {', '.join(METHODS)}, all)")
        if name not in names:
            names.append(name)
    return tuple(names)


def _edge_method(text: str) -> str:
    method = text.strip().lower()
    if method not in ("sobel", "canny"):
        raise ApiError(400, f"edge_method must be sobel or canny, got {text!r}")
    return method


def data_url(rgb: Any) -> str:
    """An RGB uint8 array as ``data:image/png;base64,…``."""
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ApiError(500, "cannot encode the overlay as PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _overlays(loaded: Any, methods: tuple[str, ...], edge_method: str, block_size: int) -> dict[str, str]:
    """One picture per method: entropy heatmap, edges in red, the spectrum, cluster regions outlined."""
    from healing.analysis import overlays
    from healing.analysis.clusters import detect_clusters
    from healing.analysis.edges import canny_edges, sobel_edges
    from healing.analysis.engine import image_entropy
    from healing.analysis.fourier import analyze_fourier
    from healing.analysis.imaging import downscale

    out: dict[str, str] = {}
    small, scale = downscale(loaded.pixels, OVERLAY_SIZE)
    if "entropy" in methods:
        emap = image_entropy(loaded, block_size)
        out["entropy"] = data_url(overlays.entropy_heatmap(emap.image, (small.shape[1], small.shape[0])))
    if "edges" in methods:
        edges = canny_edges(small, scale=scale) if edge_method == "canny" else sobel_edges(small, scale=scale)
        out["edges"] = data_url(overlays.edge_overlay(small, edges.edges, max_size=OVERLAY_SIZE))
    if "fourier" in methods:
        spectrum = analyze_fourier(small, scale=scale).spectrum
        if spectrum is not None:
            out["fourier"] = data_url(overlays.spectrum_image(spectrum))
    if "clusters" in methods:
        found = detect_clusters(small, 5.0, 10, "position", scale=scale)
        regions = [{"region": r["region"], "severity": "low"} for r in found.regions_of_interest]
        out["clusters"] = data_url(overlays.findings_overlay(loaded.pixels, regions, max_size=OVERLAY_SIZE))
    return out


@dataclass(frozen=True)
class Parameters:
    """The methods' parameters listed by GET /api/v1/models (the guide's detector arguments); None: the default."""

    threshold: float | None = None
    low_threshold: float | None = None
    high_threshold: float | None = None
    max_frequencies: int | None = None
    eps: float | None = None
    min_samples: int | None = None
    feature_type: str | None = None
    block_size: int | None = None

    def check(self) -> Parameters:
        low = 50.0 if self.low_threshold is None else self.low_threshold
        high = 150.0 if self.high_threshold is None else self.high_threshold
        if low > high:
            raise ApiError(400, f"low_threshold ({low:g}) must not exceed high_threshold ({high:g})")
        if self.block_size is not None and self.block_size % 4:
            raise ApiError(400, f"block_size must be a multiple of 4 bytes (one pixel), got {self.block_size}")
        return self


def _apply_parameters(result: dict[str, Any], loaded: Any, methods: tuple[str, ...], edge_method: str,
                      params: Parameters) -> None:
    """Recompute the methods whose parameters were given, on the same reduced picture analyze_image uses."""
    from healing.analysis.edges import canny_edges, sobel_edges
    from healing.analysis.engine import DEFAULT_ANALYSIS_SIZE
    from healing.analysis.fourier import analyze_fourier
    from healing.analysis.imaging import downscale

    edges_given = params.threshold is not None or params.low_threshold is not None or params.high_threshold is not None
    if not ((edges_given and "edges" in methods) or (params.max_frequencies is not None and "fourier" in methods)):
        return
    small, scale = downscale(loaded.pixels, DEFAULT_ANALYSIS_SIZE)
    if edges_given and "edges" in methods:
        if edge_method == "canny":
            low = 50.0 if params.low_threshold is None else params.low_threshold
            high = 150.0 if params.high_threshold is None else params.high_threshold
            result["edges"] = canny_edges(small, low, high, scale=scale).to_dict()
        else:
            result["edges"] = sobel_edges(small, params.threshold, scale=scale).to_dict()
    if params.max_frequencies is not None and "fourier" in methods:
        result["fourier"] = analyze_fourier(small, params.max_frequencies, scale=scale).to_dict()


def analyze_bytes(name: str, data: bytes, methods: tuple[str, ...], edge_method: str, overlay: bool,
                  settings: Settings, api: ApiSettings, params: Parameters | None = None) -> dict[str, Any]:
    """{"image": facts, "analysis": per method} of one upload (InputError/CorruptedError when unreadable)."""
    from healing.analysis.engine import analyze_image
    from healing.analysis.loading import load_image

    params = params or Parameters()
    block_size = params.block_size or settings.health_check.block_size
    clustering = {k: v for k, v in (("eps", params.eps), ("min_samples", params.min_samples)) if v is not None}
    with temporary_file(name, data) as path:
        loaded = load_image(path, max_pixels=api.max_upload_pixels, max_metadata_bytes=api.max_metadata_bytes)
        result = analyze_image(loaded, methods, edge_method=edge_method, block_size=block_size, **clustering)
        _apply_parameters(result, loaded, methods, edge_method, params)
        if params.feature_type and "clusters" in methods:
            result["clusters"] = {params.feature_type: result["clusters"][params.feature_type]}
        pictures = _overlays(loaded, methods, edge_method, block_size) if overlay else {}
    analysis = {}
    for method in methods:
        section = dict(result[method])
        if method in pictures:
            section["overlay"] = pictures[method]
        analysis[method] = section
    image = {key: result.get(key) for key in ("width", "height", "grid_size", "pixelrts", "analysis_size")}
    return {"image": image, "analysis": analysis}


@router.post("/api/v1/analyze", response_model=AnalyzeResponse, tags=["guide"], responses=ERROR_RESPONSES)
async def analyze(request: Request, file: Annotated[UploadFile, File(description="a .rts.png or PNG")],
                  _who: Viewer,
                  methods: Annotated[str | None, Form(description='JSON list, e.g. ["edges", "fourier"]; default all')] = None,
                  edge_method: Annotated[str, Form(description="sobel or canny")] = "sobel",
                  return_overlay: Annotated[bool, Form(description="add data:image/png;base64 overlays")] = False,
                  threshold: Annotated[float | None, Form(ge=0, le=1e6, description="sobel: gradient magnitude of an "
                                                          "edge (default mean + 2·std)")] = None,
                  low_threshold: Annotated[float | None, Form(ge=0, le=1e6, description="canny (default 50)")] = None,
                  high_threshold: Annotated[float | None, Form(ge=0, le=1e6, description="canny (default 150)")] = None,
                  max_frequencies: Annotated[int | None, Form(ge=1, le=100, description="fourier (default 10)")] = None,
                  eps: Annotated[float | None, Form(gt=0, le=1e4, description="clusters: DBSCAN radius (default 5)")] = None,
                  min_samples: Annotated[int | None, Form(ge=1, le=10_000, description="clusters (default 10)")] = None,
                  feature_type: Annotated[Literal["position", "color"] | None, Form(description="clusters: one kind "
                                                                                    "(default both)")] = None,
                  block_size: Annotated[int | None, Form(ge=64, le=1 << 24, description="entropy: bytes per block "
                                                         "(default health_check.block_size)")] = None) -> Any:
    """Entropy, edges, Fourier and clusters of one uploaded image (the numbers of `selfheal analyze`)."""
    from healing.errors import CorruptedError, InputError

    api = _api(request)
    chosen, edge = parse_methods(methods), _edge_method(edge_method)
    params = Parameters(threshold, low_threshold, high_threshold, max_frequencies, eps, min_samples, feature_type,
                        block_size).check()
    name, data = await read_upload(file, api)
    require_png(data, api, name)
    try:
        result = await run_in_threadpool(analyze_bytes, name, data, chosen, edge, return_overlay, _settings(request), api,
                                         params)
    except CorruptedError as exc:
        raise ApiError(422, f"{name}: damaged image: {_strip_path(exc, name)}") from None
    except InputError as exc:
        raise ApiError(400, f"{name}: {_strip_path(exc, name)}") from None
    return {"success": True, "file": name, **result}


def _strip_path(exc: BaseException, name: str) -> str:
    """The error's text without the temporary directory the upload was written to."""
    import re

    return re.sub(r"/[^\s:]*selfheal-api-[^/\s]*/", "", str(exc)).replace(f"{name}: ", "", 1)


@router.post("/api/v1/batch", response_model=BatchResponse, tags=["guide"], responses=ERROR_RESPONSES)
async def batch(request: Request, files: Annotated[list[UploadFile], File(description="repeat the field per image")],
                _who: Viewer,
                methods: Annotated[str | None, Form(description="JSON list; default all")] = None,
                edge_method: Annotated[str, Form(description="sobel or canny")] = "sobel",
                return_overlay: Annotated[bool, Form(description="add data:image/png;base64 overlays")] = False) -> Any:
    """Analyse several uploads; a file that cannot be analysed is an item with status "error", not a failure."""
    from healing.errors import CorruptedError, InputError

    api, settings = _api(request), _settings(request)
    if len(files) > api.max_batch_files:
        raise ApiError(413, f"{len(files)} files in one batch; the limit is {api.max_batch_files} (api.max_batch_files)")
    chosen, edge = parse_methods(methods), _edge_method(edge_method)
    results: list[dict[str, Any]] = []
    for upload in files:
        name, data = await read_upload(upload, api)
        problem = png_problem(data, api)
        if problem is not None:
            results.append({"file": name, "status": "error", "error": problem[1]})
            continue
        try:
            result = await run_in_threadpool(analyze_bytes, name, data, chosen, edge, return_overlay, settings, api)
        except CorruptedError as exc:
            results.append({"file": name, "status": "error", "error": f"damaged image: {_strip_path(exc, name)}"})
        except InputError as exc:
            results.append({"file": name, "status": "error", "error": _strip_path(exc, name)})
        else:
            results.append({"file": name, "status": "success", **result})
    return {"success": True, "results": results}


def choose_providers(model: str | None, endpoint: str | None, settings: Settings, api: ApiSettings) -> list[Any]:
    """The providers of one API check: allow-listed names only; an endpoint only from the configuration."""
    from healing.errors import UsageError
    from healing.vision.selection import PROVIDERS, make_provider, providers_for_upload, validate_endpoint

    try:
        providers = providers_for_upload(model or None, settings)
        if not endpoint:
            return providers
        url = validate_endpoint(endpoint, "endpoint")
    except UsageError as exc:
        raise ApiError(400, str(exc)) from None
    names = [p.name for p in providers]
    http = [n for n in names if PROVIDERS[n].kind != "statistical"]
    if len(http) != 1:
        raise ApiError(400, f"endpoint needs exactly one HTTP vision model in model, got {len(http)}")
    name, vm = http[0], settings.vision_model
    configured = vm.endpoint if vm.provider == name and vm.endpoint else PROVIDERS[name].default_endpoint
    allowed = {validate_endpoint(configured, "config: vision_model.endpoint")} if configured else set()
    allowed |= set(api.allowed_endpoints)
    if url not in allowed:
        raise ApiError(400, f"endpoint {url} is not an allowed model URL for {name} "
                            f"(allowed: {', '.join(sorted(allowed)) or 'none'}; api.allowed_endpoints)")
    return [make_provider(n, settings, endpoint=url if n == name else None) for n in names]


def check_bytes(name: str, data: bytes, providers: list[Any], settings: Settings, api: ApiSettings) -> dict[str, Any]:
    """The checker's verdict on one upload, with the upload limits applied (never raises for bad input)."""
    from healing.analysis.health import VLMHealthChecker

    limited = replace(settings, pixelrts=replace(settings.pixelrts, max_pixels=api.max_upload_pixels))
    checker = VLMHealthChecker(limited, providers=providers)
    with temporary_file(name, data) as path:
        result = checker.check_health(path).to_dict()
        return hide_path(result, str(path), name)


@router.post("/api/v1/health-check", response_model=CheckResponse, tags=["guide"], responses=ERROR_RESPONSES)
async def health_check(request: Request, file: Annotated[UploadFile, File(description="a .rts.png or PNG")],
                       _who: Viewer,
                       model: Annotated[str | None, Form(description="a vision model on vision_model.upload_allowlist "
                                                                     "(default: statistical)")] = None,
                       endpoint: Annotated[str | None, Form(description="that model's configured URL or one of "
                                                                        "api.allowed_endpoints")] = None) -> Any:
    """Health verdict of one uploaded image: the `selfheal check --json` object plus ``success``."""
    api, settings = _api(request), _settings(request)
    providers = await run_in_threadpool(choose_providers, model, endpoint, settings, api)
    name, data = await read_upload(file, api)
    require_png(data, api, name)
    result = await run_in_threadpool(check_bytes, name, data, providers, settings, api)
    result.pop("image_path", None)
    return {"success": True, "file": name, "models": [p.name for p in providers], **result}
