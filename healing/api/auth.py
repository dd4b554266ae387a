"""Bearer-token auth as FastAPI dependencies: ``viewer`` and ``operator`` (operator ⊇ viewer).

No token, an unknown one or a revoked one → 401 (with ``WWW-Authenticate: Bearer``); a valid token
whose role is too low → 403. The token is hashed before anything else touches it and never logged.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
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
        try:
            with session_scope() as session:
                touch(session, principal.name)
        except Exception:  # a busy database must not refuse a valid token; last_used_at is a convenience
            pass
    return principal


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def caller(credentials: Credentials) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer TOKEN' "
                            "(selfheal api token create NAME --role viewer|operator)", _CHALLENGE)
    principal = await run_in_threadpool(_lookup, credentials.credentials)
    if principal is None:
        raise ApiError(401, "invalid or revoked token", _CHALLENGE)
    return principal


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
