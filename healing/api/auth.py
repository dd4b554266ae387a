"""Bearer-token auth as FastAPI dependencies: ``viewer`` and ``operator`` (operator ⊇ viewer).

No token, an unknown one or a revoked one → 401 (with ``WWW-Authenticate: Bearer``); a valid token
whose role is too low → 403. The token is hashed before anything else touches it and never logged.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from healing.api.errors import ApiError
from healing.api.tokens import Principal, authenticate, touch

bearer = HTTPBearer(auto_error=False, description="a token from `selfheal api token create NAME --role viewer|operator`")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _lookup(token: str) -> Principal | None:
    from storage.engine import session_scope

    with session_scope(write=False) as session:
        principal, stale = authenticate(session, token)
    if principal is not None and stale:
        # In the background: a writer holding the database must not delay (or refuse) a valid token.
        threading.Thread(target=_touch, args=(principal.name,), name="api-token-touch", daemon=True).start()
    return principal


def _touch(name: str) -> None:
    from storage.engine import session_scope

    try:
        with session_scope() as session:
            touch(session, name)
    except Exception:  # last_used_at is a convenience; a busy database skips one refresh
        pass


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
MISSING = ("missing bearer token: send 'Authorization: Bearer TOKEN' "
           "(selfheal api token create NAME --role viewer|operator)")
INVALID = "invalid or revoked token"


async def principal_for(scheme: str, token: str) -> Principal:
    """The caller named by an Authorization header's scheme and token; ApiError 401 otherwise."""
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, MISSING, _CHALLENGE)
    principal = await run_in_threadpool(_lookup, token)
    if principal is None:
        raise ApiError(401, INVALID, _CHALLENGE)
    return principal


async def caller(request: Request, credentials: Credentials) -> Principal:
    known = getattr(request.state, "principal", None)  # already proven by TokenGate
    if isinstance(known, Principal):
        return known
    if credentials is None:
        raise ApiError(401, MISSING, _CHALLENGE)
    return await principal_for(credentials.scheme, credentials.credentials)


class TokenGate:
    """ASGI middleware: every /api/ request must carry a valid token before its body is read, so an
    anonymous client cannot make the server receive and parse an upload. Roles are checked later, by
    the endpoints' dependencies (which reuse the principal found here)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        from healing.api.errors import error_response, status_of
        from healing.errors import SelfHealError

        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"").decode("latin-1")
        scheme, _, token = header.strip().partition(" ")
        try:
            principal = await principal_for(scheme, token.strip())
        except ApiError as exc:  # the body is never read, so the connection cannot be reused: close it
            await error_response(exc.status, exc.message, {**(exc.headers or {}), "Connection": "close"})(scope, receive, send)
            return
        except SelfHealError as exc:  # the database cannot be read: 503, one line
            await error_response(status_of(exc), str(exc), {"Connection": "close"})(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def role(required: str):  # type: ignore[no-untyped-def]
    """A dependency that admits tokens of ``required`` or a higher role."""

    async def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        if not principal.may(required):
            raise ApiError(403, f"token {principal.name!r} has role {principal.role}; this needs {required}")
        return principal

    return check


viewer = role("viewer")
operator = role("operator")
Viewer = Annotated[Principal, Depends(viewer)]
Operator = Annotated[Principal, Depends(operator)]
