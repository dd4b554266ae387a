"""Errors of the REST API: every failure answers ``{"success": false, "error": "<one line>"}``.

ApiError carries its HTTP status. The handlers installed by :func:`install_handlers` map the rest:
FastAPI's request validation (422, the first problem named), Starlette's HTTP errors (404 unknown
path, 405 wrong method, …), selfheal's own errors (InputError 400, UsageError 400, CorruptedError 422,
DatabaseError 503, ConfigError/DependencyError 500), LookupError 404, and anything unexpected (500,
logged with its traceback on the server, one line for the client).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from healing.errors import (
    ConfigError,
    CorruptedError,
    DatabaseError,
    DependencyError,
    InputError,
    SelfHealError,
    UsageError,
)
from healing.redaction import redact

log = logging.getLogger("selfheal.api")
MAX_ERROR_CHARS = 500


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    success: bool = False
    error: str


class ApiError(Exception):
    """An error answer with its status; the message is one line for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def one_line(message: object) -> str:
    text = redact(" ".join(str(message).split())) or "error"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def error_response(status: int, message: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": one_line(message)}, status_code=status, headers=headers)


def status_of(exc: BaseException) -> int:
    """The HTTP status of one of selfheal's errors."""
    if isinstance(exc, DatabaseError):
        return 503
    if isinstance(exc, CorruptedError):
        return 422
    if isinstance(exc, InputError | UsageError):
        return 400
    if isinstance(exc, ConfigError | DependencyError):
        return 500
    if isinstance(exc, LookupError):
        return 404
    return 500


def _validation_line(exc: RequestValidationError) -> str:
    errors: list[Any] = list(exc.errors())
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error")
        return "the request body is not valid JSON" + (f" ({detail})" if detail else "")
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]  # where the value came from; the field's own name follows
    where = ".".join(str(part) for part in loc)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where or 'request'}: {first.get('msg', 'invalid')}{more}"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = "not found: no such endpoint (see /docs)"
        return error_response(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(SelfHealError)
    async def _selfheal(_request: Request, exc: SelfHealError) -> JSONResponse:
        return error_response(status_of(exc), str(exc))

    @app.exception_handler(LookupError)
    async def _lookup(_request: Request, exc: LookupError) -> JSONResponse:
        return error_response(404, str(exc).strip("'\""))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "bad input (one line says what)"),
        (401, "no token, an unknown token or a revoked token"),
        (403, "the token's role may not do this"),
        (404, "no such object or endpoint"),
        (409, "the request conflicts with the current state"),
        (413, "the body, a file, or an image's pixels exceed the configured limits"),
        (422, "invalid parameters, or a damaged image"),
        (500, "internal error"),
        (503, "the database is locked or unavailable"),
    )
}
