"""Bearer tokens of the REST API.

A token is ``shk_`` followed by 32 random bytes (URL-safe base64): far too much entropy to guess, so
storing its plain sha256 is enough (no slow password hash needed) and the token itself is never kept,
logged or printed again after creation. Authentication hashes the presented token, looks the hash up
and compares it once more with ``hmac.compare_digest`` (constant time).

  create_token(session, name, role, *, actor) -> (token, row)   audit: api.token.created
  list_tokens(session) -> list[row]                              never the token, never its hash
  revoke_token(session, name, *, actor) -> row                   audit: api.token.revoked
  authenticate(session, token) -> Principal | None               None: unknown or revoked

A revoked token keeps its row; creating a token under a revoked name reuses the row with a new token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from healing.errors import EXIT_UNKNOWN, SelfHealError, UsageError

if TYPE_CHECKING:
    from sqlmodel import Session

ROLES = ("viewer", "operator")
TOKEN_PREFIX = "shk_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KIND_TOKEN_CREATED = "api.token.created"
KIND_TOKEN_REVOKED = "api.token.revoked"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is refreshed at most this often (no write per request)
_ROWS = ("id", "name", "role", "created_at", "created_by", "last_used_at", "revoked_at", "revoked_by")


class TokenError(SelfHealError):
    """A token cannot be created or revoked as asked (exit 3)."""

    exit_code = EXIT_UNKNOWN


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the audit actor is ``api:<name>``) and role."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"api:{self.name}"

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise UsageError(f"token name must be 1-64 characters of letters, digits, '.', '_' or '-' "
                         f"starting with a letter or digit, got {name!r}")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def _row(token: Any) -> dict[str, Any]:
    data = token.model_dump()
    return {key: data[key] for key in _ROWS}


def create_token(session: Session, name: str, role: str, *, actor: str) -> tuple[str, dict[str, Any]]:
    """A new token for ``name`` with ``role``; returns (the token, shown only now, and its row)."""
    from sqlmodel import select

    from storage.audit import append_event
    from storage.models import ApiToken, utcnow

    check_name(name)
    check_role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if row is not None and row.revoked_at is None:
        raise TokenError(f"a token named {name!r} exists already; revoke it first (selfheal api token revoke {name})")
    if row is None:
        row = ApiToken(name=name, role=role, token_sha256=hash_token(token), created_at=now, created_by=actor)
    else:
        row.role, row.token_sha256, row.created_at, row.created_by = role, hash_token(token), now, actor
        row.last_used_at = row.revoked_at = row.revoked_by = None
    session.add(row)
    session.flush()
    append_event(session, KIND_TOKEN_CREATED, f"api-token:{name}", {"name": name, "role": role}, actor, now=now)
    return token, _row(row)


def list_tokens(session: Session) -> list[dict[str, Any]]:
    """Every token row (active and revoked) by name, without the token or its hash."""
    from sqlmodel import select

    from storage.models import ApiToken

    return [_row(t) for t in session.exec(select(ApiToken).order_by(ApiToken.name))]


def revoke_token(session: Session, name: str, *, actor: str) -> dict[str, Any]:
    """Revoke the token called ``name``; the next request with it answers 401."""
    from sqlmodel import select

    from storage.audit import append_event
    from storage.models import ApiToken, utcnow

    row = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None:
        raise TokenError(f"no token named {name!r}")
    if row.revoked_at is not None:
        raise TokenError(f"token {name!r} was revoked already at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
    row.revoked_at, row.revoked_by = utcnow(), actor
    session.add(row)
    session.flush()
    append_event(session, KIND_TOKEN_REVOKED, f"api-token:{name}", {"name": name, "role": row.role}, actor,
                 now=row.revoked_at)
    return _row(row)


def authenticate(session: Session, token: str, *, now: datetime | None = None) -> tuple[Principal | None, bool]:
    """(the caller, whether last_used_at is due a refresh) for a presented token; (None, False) when
    it is unknown or revoked."""
    import sqlalchemy as sa

    from storage.models import ApiToken, utcnow

    if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        return None, False
    digest = hash_token(token)
    t = ApiToken.__table__.c
    row = session.execute(sa.select(t.name, t.role, t.token_sha256, t.last_used_at, t.revoked_at)
                          .where(t.token_sha256 == digest)).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest) or row.revoked_at is not None:
        return None, False
    now = now or utcnow()
    stale = row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION
    return Principal(row.name, row.role), stale


def touch(session: Session, name: str) -> None:
    """Record that the token ``name`` was just used (not audited: reads are not events)."""
    import sqlalchemy as sa

    from storage.models import ApiToken, utcnow

    t = ApiToken.__table__.c
    session.execute(sa.update(ApiToken.__table__).where(t.name == name).values(last_used_at=utcnow()))
