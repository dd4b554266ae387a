"""Operator endpoints under /api/v1/: the same workflows as the dashboard and the CLI.

Reads need a viewer token, writes an operator token; every write is audited with the actor
``api:<token name>``. Nothing here checks, heals or applies by itself: check/heal/accept-change are
"run now" requests the worker carries out (dashboard.actions.request_run), promotions are decided
through healing.tuning.promotions (dashboard.actions.decide_promotion, rollback_promotion), exactly as
the dashboard and `selfheal promotions` do.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from healing.api.auth import Operator, Viewer
from healing.api.errors import ERROR_RESPONSES, ApiError, ErrorResponse
from healing.api.tokens import Principal

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
STATUSES = ("healthy", "warning", "critical", "unknown")
MAX_ID = 2**63 - 1  # the database's integer range: a larger id cannot exist
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
PROMOTION_STATUSES = ("pending_review", "approved", "applied", "rejected", "expired", "failed", "rolled_back")


class Envelope(BaseModel):
    """Every successful answer: ``success`` plus the fields of the endpoint."""

    model_config = {"extra": "allow"}
    success: bool


class RegisterBody(BaseModel):
    path: str = Field(..., min_length=1, max_length=4096, description="the image file on the server's disk")
    critical: bool | None = None
    interval_s: int | None = Field(None, ge=1, le=365 * 86400)
    accept_current: bool = False


class DecisionBody(BaseModel):
    reason: str | None = Field(None, max_length=2000)


def _page_limit(request: Request, limit: int) -> int:
    most = request.app.state.api.max_page_size
    if limit > most:
        raise ApiError(400, f"limit must be ≤ {most} (api.max_page_size), got {limit}")
    return limit


def _read(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from storage.engine import session_scope

    def run() -> Any:
        with session_scope(write=False) as session:
            return fn(session, *args, **kwargs)

    return run_in_threadpool(run)


# --------------------------------------------------------------------------- images

def _images(status: str | None) -> list[dict[str, Any]]:
    from storage import queries
    from storage.engine import session_scope

    with session_scope(write=False) as session:
        rows = queries.list_images_with_latest_status(session)
    return [r for r in rows if status is None or r["last_status"] == status]


@router.get("/images", response_model=Envelope, tags=["images"])
async def list_images(_who: Viewer, request: Request, status: Literal["healthy", "warning", "critical", "unknown"] | None = None,
                      offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1)] = 50) -> Any:
    """Registered images with their latest status, by path; ``status`` filters, ``offset``/``limit`` page."""
    limit = _page_limit(request, limit)
    rows = await run_in_threadpool(_images, status)
    return {"success": True, "total": len(rows), "offset": offset, "limit": limit, "images": rows[offset:offset + limit]}


@router.post("/images", response_model=Envelope, status_code=201, tags=["images"])
async def register(who: Operator, request: Request, body: RegisterBody) -> Any:
    """Register an image file (on the server's disk): golden copy + baseline, checked by the worker from then on."""
    from healing.images.registry import register_image
    from healing.safeio import open_regular

    if "\0" in body.path or not body.path.isprintable():
        raise ApiError(400, "path must be one line of printable characters (no NUL or control characters)")

    def run() -> dict[str, Any]:
        with open_regular(body.path, what="an image file"):
            pass  # a FIFO or device is refused at once instead of blocking the registry's reads
        return register_image(body.path, settings=request.app.state.settings, critical=body.critical,
                              interval_s=body.interval_s, accept_current=body.accept_current, actor=who.actor)

    from healing.errors import CorruptedError, InputError

    try:
        outcome = await run_in_threadpool(run)
    except (InputError, CorruptedError) as exc:
        text = str(exc)  # the registry names the path in most of its errors; the codec does not
        raise ApiError(422 if isinstance(exc, CorruptedError) else 400,
                       text if body.path in text else f"{body.path}: {text}") from None
    return {"success": True, "image": outcome["image"], "golden_sha256": outcome["golden_sha256"],
            "changed": outcome["changed"], "hash_verified": outcome["hash_verified"],
            "accepted_current": outcome["accepted_current"]}


def _image_detail(image_id: int, settings: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    from storage import queries
    from storage.engine import session_scope
    from storage.models import RunRequest

    with session_scope(write=False) as session:
        image = queries.get_image(session, image_id=image_id)
        if image is None:
            raise ApiError(404, f"image {image_id} is not registered")
        latest = queries.latest_check(session, image_id)
        heals = queries.recent_heals(session, image_id=image_id, limit=20)
        r = RunRequest.__table__.c
        requests = [dict(row._mapping) for row in session.execute(
            sa.select(RunRequest.__table__).where(r.target == image["path"]).order_by(r.id.desc()).limit(20))]
    from healing.images.parity import parity_status

    try:
        parity = parity_status(image, golden_dir=settings.golden_dir)
    except Exception as exc:  # an unreadable parity file is reported, not a 500
        parity = {"present": False, "problem": " ".join(str(exc).split())[:300]}
    image.pop("baseline", None)
    return {"image": image, "latest_check": latest, "findings": (latest or {}).get("findings") or [],
            "heals": heals, "requests": requests, "parity": parity}


@router.get("/images/{image_id}", response_model=Envelope, tags=["images"])
async def image_detail(_who: Viewer, image_id: RowId, request: Request) -> Any:
    """One image: its row, the latest check (with findings), recent heals (each names its method:
    repair_parity, restore_golden …), run-now requests and its parity (present, overhead, last verified)."""
    return {"success": True, **await run_in_threadpool(_image_detail, image_id, request.app.state.settings)}


async def _request(kind: str, image_id: int, who: Principal) -> Any:
    from dashboard.actions import ActionRefused, request_run
    from storage import queries

    image = await _read(queries.get_image, image_id=image_id)
    if image is None:
        raise ApiError(404, f"image {image_id} is not registered")
    try:
        row = await run_in_threadpool(request_run, kind, image["path"], who.actor)
    except ActionRefused as exc:
        raise ApiError(409, str(exc)) from None
    duplicate = row.pop("duplicate")
    return {"success": True, "request": row, "duplicate": duplicate}


@router.post("/images/{image_id}/check", response_model=Envelope, status_code=202, tags=["images"])
async def request_check(who: Operator, image_id: RowId) -> Any:
    """Ask the worker to check the image now (a pending request of the same kind is returned, not doubled)."""
    return await _request("check", image_id, who)


@router.post("/images/{image_id}/heal", response_model=Envelope, status_code=202, tags=["images"])
async def request_heal(who: Operator, image_id: RowId) -> Any:
    """Ask the worker to heal the image now (restore from its golden copy)."""
    return await _request("heal", image_id, who)


@router.post("/images/{image_id}/accept-change", response_model=Envelope, status_code=202, tags=["images"])
async def request_accept_change(who: Operator, image_id: RowId) -> Any:
    """Ask the worker to accept the image's current content as its new golden copy and baseline."""
    return await _request("accept_change", image_id, who)


@router.get("/requests/{request_id}", response_model=Envelope, tags=["images"])
async def get_request(_who: Viewer, request_id: RowId) -> Any:
    """One run-now request: pending, running, done or failed, with the worker's result."""
    from storage.models import RunRequest

    def run(session: Any) -> Any:
        row = session.get(RunRequest, request_id)
        return row.model_dump() if row is not None else None

    row = await _read(run)
    if row is None:
        raise ApiError(404, f"request {request_id} does not exist")
    return {"success": True, "request": row}


@router.get("/nodes", response_model=Envelope, tags=["images"])
async def list_nodes(_who: Viewer) -> Any:
    """The worker nodes sharing this database (storage.nodes): per node its images by status, its worker's
    latest heartbeat, whether that worker runs, and whether it leads (runs the global jobs)."""
    from storage.nodes import list_nodes as nodes

    return {"success": True, "nodes": await _read(nodes)}


# --------------------------------------------------------------------------- promotions

@router.get("/promotions", response_model=Envelope, tags=["promotions"])
async def list_promotions(_who: Viewer, request: Request, status: Literal[PROMOTION_STATUSES] | None = None,  # type: ignore[valid-type]
                          limit: Annotated[int, Query(ge=1)] = 50) -> Any:
    """Promotions newest first (optionally one status), with score and whether the run was inconclusive."""
    from storage import tuning_queries as tq

    rows = await _read(tq.list_promotions_detail, status=status, limit=_page_limit(request, limit))
    return {"success": True, "promotions": rows}


@router.get("/promotions/{promotion_id}", response_model=Envelope, tags=["promotions"])
async def get_promotion(_who: Viewer, promotion_id: RowId) -> Any:
    from storage.models import Promotion

    def run(session: Any) -> Any:
        row = session.get(Promotion, promotion_id)
        return row.model_dump() if row is not None else None

    row = await _read(run)
    if row is None:
        raise ApiError(404, f"promotion {promotion_id} does not exist")
    return {"success": True, "promotion": row}


async def _decide(promotion_id: int, approve: bool, body: DecisionBody | None, who: Principal) -> Any:
    from dashboard.actions import ActionRefused, decide_promotion

    try:
        row = await run_in_threadpool(decide_promotion, promotion_id, approve, who.actor,
                                      reason=body.reason if body else None)
    except ActionRefused as exc:
        raise ApiError(404 if "does not exist" in str(exc) else 409, str(exc)) from None
    return {"success": True, "promotion": row}


@router.post("/promotions/{promotion_id}/approve", response_model=Envelope, tags=["promotions"])
async def approve(who: Operator, promotion_id: RowId, body: DecisionBody | None = None) -> Any:
    """Approve a pending promotion: applied to the target config at once (status applied, or failed with why)."""
    return await _decide(promotion_id, True, body, who)


@router.post("/promotions/{promotion_id}/reject", response_model=Envelope, tags=["promotions"])
async def reject(who: Operator, promotion_id: RowId, body: DecisionBody | None = None) -> Any:
    """Reject a pending promotion (nothing is written)."""
    return await _decide(promotion_id, False, body, who)


@router.post("/promotions/{promotion_id}/rollback", response_model=Envelope, tags=["promotions"],
             responses={501: {"model": ErrorResponse, "description": "this build's tuning loop cannot roll back"}})
async def rollback(who: Operator, request: Request, promotion_id: RowId, body: DecisionBody | None = None) -> Any:
    """Undo an applied promotion: the backup taken at the apply is restored and the reload command runs."""
    from healing.errors import InputError

    try:
        from healing.tuning.promotions import rollback_promotion  # type: ignore[attr-defined]
    except ImportError:
        raise ApiError(501, "this version of the tuning loop cannot roll promotions back") from None
    try:
        row = await run_in_threadpool(lambda: rollback_promotion(None, promotion_id, who.actor,
                                                                 reason=body.reason if body else None,
                                                                 settings=request.app.state.settings))
    except InputError as exc:
        raise ApiError(404 if "does not exist" in str(exc) else 409, str(exc)) from None
    return {"success": True, "promotion": row}


# --------------------------------------------------------------------------- tuning

@router.get("/tuning/status", response_model=Envelope, tags=["tuning"])
async def tuning_status(_who: Viewer, request: Request) -> Any:
    """Mode, rate limits, runs used, cooldown and backoff left per subsystem, open intents, pending promotions."""
    from healing.tuning.orchestration_commands import tune_status

    return {"success": True, **await run_in_threadpool(tune_status, request.app.state.settings)}


@router.get("/tuning/rate-limits", response_model=Envelope, tags=["tuning"])
async def rate_limits(_who: Viewer, request: Request) -> Any:
    """The limits and, per subsystem, what is left of them."""
    from healing.tuning.orchestration_commands import tune_status

    status = await run_in_threadpool(tune_status, request.app.state.settings)
    return {"success": True, "limits": status["limits"], "subsystems": status["subsystems"]}


def _observe(name: str, data: bytes, current: list[str], gpu_total_gib: float | None, settings: Any) -> list[dict[str, Any]]:
    from healing.api.uploads import temporary_file
    from healing.tuning.actuators import parse_tuning_section
    from healing.tuning.observer import observe_file, parse_current

    try:
        values = parse_current(current)
    except ValueError as exc:
        raise ApiError(400, f"current: {exc}") from None
    with temporary_file(name, data) as path:
        events = observe_file(path, settings=parse_tuning_section(settings.section("tuning")), current=values,
                              gpu_total_gib=gpu_total_gib)
    return [e.to_json() for e in events]


@router.post("/tune/observe", response_model=Envelope, tags=["tuning"])
async def tune_observe(_who: Viewer, request: Request, file: Annotated[UploadFile, File(description="a vLLM log")],
                       current: Annotated[list[str] | None, Form(description="running values, PARAM=VALUE (repeatable)")] = None,
                       gpu_total_gib: Annotated[float | None, Form(gt=0, description="GPU size when the log does not print it")] = None,
                       ) -> Any:
    """Read an uploaded vLLM log with the Observer: one event per failure, as `selfheal tune observe --json`."""
    from dashboard.upload import safe_filename

    api = request.app.state.api
    data = await file.read(api.max_upload_bytes + 1)
    if len(data) > api.max_upload_bytes:
        raise ApiError(413, f"the log exceeds {api.max_upload_mb} MiB (dashboard.max_upload_mb)")
    name = safe_filename(file.filename or "upload.log")
    events = await run_in_threadpool(_observe, name, data, current or [], gpu_total_gib, request.app.state.settings)
    return {"success": True, "events": events}


# --------------------------------------------------------------------------- audit

def _filters(kind: str | None, subject: str | None, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    for moment, what in ((start, "start"), (end, "end")):
        if moment is not None and moment.tzinfo is None:
            raise ApiError(400, f"{what} needs a time zone, e.g. 2026-12-01T00:00:00Z")
    if start is not None and end is not None and end <= start:
        raise ApiError(400, "end must be after start")
    return {"kind": kind or None, "subject": subject or None, "start": start, "end": end}


@router.get("/audit", response_model=Envelope, tags=["audit"])
async def audit(_who: Viewer, request: Request, kind: Annotated[str | None, Query(max_length=64)] = None, subject: Annotated[str | None, Query(max_length=4096)] = None,
                start: datetime | None = None, end: datetime | None = None, offset: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1)] = 50) -> Any:
    """Audit events newest first; filters: kind, subject, [start, end) (ISO 8601 with a zone)."""
    from storage import queries

    limit = _page_limit(request, limit)
    filters = _filters(kind, subject, start, end)
    total = await _read(queries.audit_count, **filters)
    events = await _read(queries.audit_page, offset=offset, limit=limit, **filters)
    return {"success": True, "total": total, "offset": offset, "limit": limit, "events": events}


def _jsonl(filters: dict[str, Any], max_rows: int) -> str:
    import sqlalchemy as sa

    from dashboard.data import AUDIT_CSV_COLUMNS
    from storage import queries
    from storage.engine import session_scope
    from storage.models import AuditEvent

    a = AuditEvent.__table__.c
    query = (sa.select(*(getattr(a, c) for c in AUDIT_CSV_COLUMNS)).where(*queries.audit_filters(**filters))
             .order_by(a.created_at.desc(), a.id.desc()).limit(max_rows))
    out = io.StringIO()
    with session_scope(write=False) as session:
        for row in session.execute(query):
            record = dict(row._mapping)
            record["created_at"] = record["created_at"].astimezone(UTC).isoformat().replace("+00:00", "Z")
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out.getvalue()


@router.get("/audit/export", tags=["audit"], response_class=Response,
            responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}},
                             "description": "CSV (spreadsheet-safe cells) or JSON Lines, newest first"}})
async def audit_export(_who: Viewer, request: Request, format: Literal["csv", "jsonl"] = "csv", kind: Annotated[str | None, Query(max_length=64)] = None,
                       subject: Annotated[str | None, Query(max_length=4096)] = None, start: datetime | None = None,
                       end: datetime | None = None) -> Response:
    """The matching events (at most dashboard.csv_export_max) as CSV or JSON Lines; the payload column is
    the canonical JSON exactly as hashed, so an export can be re-verified."""
    from dashboard.data import audit_csv

    filters = _filters(kind, subject, start, end)
    most = request.app.state.api.export_max
    if format == "csv":
        text = await run_in_threadpool(lambda: audit_csv(None, max_rows=most, **filters))
        return Response(text, media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="audit.csv"'})
    text = await run_in_threadpool(_jsonl, filters, most)
    return Response(text, media_type="application/x-ndjson",
                    headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'})


@router.get("/audit/verify", response_model=Envelope, tags=["audit"])
async def audit_verify(_who: Viewer, request: Request) -> Any:
    """Walk the whole hash chain now (storage.audit.verify_chain); ``ok`` false names the first problems."""
    from dashboard.data import verify_audit_chain

    report = await run_in_threadpool(verify_audit_chain, None)
    request.app.state.chain.remember(report)
    return {"success": True, **report}
