"""The dashboard's login gate: operator password, OIDC through ``st.login``, or off on loopback only.

Where the password comes from (first found wins):
  1. Streamlit secrets: ``[dashboard] password = "..."`` in ``.streamlit/secrets.toml``;
  2. the ``SELFHEAL_DASHBOARD_PASSWORD`` environment variable.
Either may hold the plain password or a PBKDF2 hash written by :func:`hash_password`
(``pbkdf2_sha256$<iterations>$<salt hex>$<digest hex>``), so a secrets file need not hold the clear text.
A submitted password is compared as a PBKDF2 digest with ``hmac.compare_digest`` (constant time).

OIDC: when the secrets hold an ``[auth]`` section, a "Log in with single sign-on" button calls
``st.login`` (one button per named provider sub-section, e.g. ``[auth.okta]``).

``SELFHEAL_DASHBOARD_AUTH=off`` disables the gate, but only while the server is bound to the loopback
address (``server.address`` 127.0.0.1 or ::1); on any other address the variable is refused with a
message, never silently honoured.

No page is drawn before :func:`require_operator` returns: it calls ``st.stop()`` instead.

Reloads: a password login gets a session token (32 random bytes, URL-safe) kept in the page address
as ``?session=…``, so F5 or a bookmark of the current page does not log the operator out. Only its
SHA-256 is stored, in this dashboard process's memory, with the operator name, the client address it
was issued to and its expiry (``dashboard.session_ttl_s``, 8 h): a token is refused from another
client address, after expiry, after logout (revoked) and after a dashboard restart (the store is
gone). Trade-off: Streamlit cannot set an HttpOnly cookie, so the token is readable by the page and
sits in the browser history and in any copied link; that is why it is bound to the client address,
short-lived and revocable, and why pages link only to the dashboard itself (no Referer leaves it).

Password guesses are throttled per operator name and per client address across every session and
dashboard process, in the database (dashboard.throttle): 5 failures, then a lock that doubles with
each further failure; while locked even the right password is refused. The client address is
``st.context.ip_address``: the TCP peer, or — when the peer is a trusted reverse proxy (uvicorn's
``FORWARDED_ALLOW_IPS``, loopback by default) — the address the proxy put in ``X-Forwarded-For``.
Headers are not read here: anything in them that no trusted proxy vouched for is the client's to
forge. A loopback client (no proxy) counts as ``local``; a proxy elsewhere must be listed in
``FORWARDED_ALLOW_IPS``, or all its clients share one address (and one throttle).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PBKDF2_ITERATIONS = 120_000
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
DEFAULT_OPERATOR = "operator"
MAX_OPERATOR_NAME = 64
LOCAL_CLIENT = "local"
# Secrets of the Streamlit secrets file: redacted from every page (see dashboard.safe).
SECRET_FIELDS = ("password", "client_secret", "cookie_secret")

SESSION_OPERATOR = "operator"
SESSION_AUTH_METHOD = "auth_method"
SESSION_TOKEN = "session_token"
SESSION_PARAM = "session"


# --------------------------------------------------------------------------- pure functions

def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A PBKDF2-SHA256 hash of ``password`` in the ``pbkdf2_sha256$iter$salt$digest`` form."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def _parse_hash(stored: str) -> tuple[int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != "pbkdf2_sha256":
        return None
    try:
        iterations, salt, digest = int(parts[1]), bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        return None
    if iterations < 1 or not salt or len(digest) != 32:
        return None
    return iterations, salt, digest


def verify_password(submitted: str, configured: str) -> bool:
    """Whether ``submitted`` matches ``configured`` (a plain password or a :func:`hash_password` hash).

    Both sides are reduced to PBKDF2 digests with the same salt and compared with
    ``hmac.compare_digest``, so the time taken does not depend on how many characters match.
    """
    if not configured:
        return False
    parsed = _parse_hash(configured)
    if parsed is None:
        # A plain configured password: hash both with a fresh salt; the work factor applies to both.
        iterations, salt = PBKDF2_ITERATIONS, secrets.token_bytes(16)
        expected = hashlib.pbkdf2_hmac("sha256", configured.encode("utf-8"), salt, iterations)
    else:
        iterations, salt, expected = parsed
    given = hashlib.pbkdf2_hmac("sha256", submitted.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(given, expected)


def auth_disabled(env: Mapping[str, str], server_address: str | None) -> tuple[bool, str | None]:
    """(gate off?, warning). ``SELFHEAL_DASHBOARD_AUTH=off`` counts only on a loopback address."""
    wanted = env.get("SELFHEAL_DASHBOARD_AUTH", "").strip().lower() in ("off", "0", "false", "no", "disabled")
    if not wanted:
        return False, None
    address = (server_address or "").strip()
    if address in LOOPBACK_ADDRESSES:
        return True, None
    shown = address or "all interfaces"
    return False, (f"SELFHEAL_DASHBOARD_AUTH=off is ignored: the server listens on {shown}, "
                   "not 127.0.0.1 (start it with --host 127.0.0.1 to run without a login)")


def configured_password(secret_values: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The operator password (or its hash) from secrets ``[dashboard] password``, else the environment."""
    section = secret_values.get("dashboard")
    if isinstance(section, Mapping):
        value = section.get("password")
        if isinstance(value, str) and value:
            return value
    value = env.get("SELFHEAL_DASHBOARD_PASSWORD", "")
    return value or None


def oidc_providers(secret_values: Mapping[str, Any]) -> list[str | None]:
    """The ``st.login`` providers configured in the ``[auth]`` secrets section ([] when none).

    ``[None]`` means the single default provider (client_id directly under ``[auth]``); named
    providers are the sub-sections that carry a ``client_id``.
    """
    section = secret_values.get("auth")
    if not isinstance(section, Mapping):
        return []
    providers: list[str | None] = [None] if section.get("client_id") else []
    providers += sorted(name for name, value in section.items() if isinstance(value, Mapping) and value.get("client_id"))
    return providers


def secret_fields(secret_values: Mapping[str, Any]) -> list[str]:
    """The secret strings of ``[dashboard]`` and ``[auth]`` (and its provider sub-sections)."""
    sections = [secret_values.get("dashboard"), secret_values.get("auth")]
    auth_section = secret_values.get("auth")
    if isinstance(auth_section, Mapping):
        sections += [v for v in auth_section.values() if isinstance(v, Mapping)]
    return [str(section[field]) for section in sections if isinstance(section, Mapping)
            for field in SECRET_FIELDS if section.get(field)]


def clean_operator_name(name: str | None) -> str:
    """The operator name recorded as the audit actor: printable, single line, at most 64 characters."""
    # Whitespace (newlines included) first becomes single spaces, then control characters go.
    text = "".join(ch for ch in " ".join((name or "").split()) if ch.isprintable()).strip()
    return text[:MAX_OPERATOR_NAME] or DEFAULT_OPERATOR


@dataclass(frozen=True)
class GateConfig:
    """What the gate found in the environment, secrets and server options for this run."""

    disabled: bool
    warning: str | None
    password: str | None
    providers: list[str | None]

    @property
    def usable(self) -> bool:
        return self.disabled or bool(self.password) or bool(self.providers)


def gate_config(secret_values: Mapping[str, Any], env: Mapping[str, str], server_address: str | None) -> GateConfig:
    """Combine the three sources of the gate's configuration (pure, for tests)."""
    disabled, warning = auth_disabled(env, server_address)
    return GateConfig(disabled, warning, configured_password(secret_values, env), oidc_providers(secret_values))


# --------------------------------------------------------------------------- session tokens

def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class SessionStore:
    """Password sessions by SHA-256 of their token: operator, client address, expiry (monotonic-free:
    wall-clock seconds). Thread-safe enough for Streamlit: each operation is one dict operation."""

    sessions: dict[str, tuple[str, str, float]]

    def issue(self, operator: str, client: str, ttl_s: float, now: float) -> str:
        token = secrets.token_urlsafe(32)
        self.prune(now)
        self.sessions[_token_hash(token)] = (operator, client, now + ttl_s)
        return token

    def resolve(self, token: str | None, client: str, now: float) -> str | None:
        """The operator of a live token presented from the client it was issued to, else None."""
        if not token or len(token) > 128:
            return None
        key = _token_hash(token)
        found = self.sessions.get(key)
        if found is None:
            return None
        operator, issued_to, expires = found
        if now >= expires:
            self.sessions.pop(key, None)
            return None
        return operator if hmac.compare_digest(issued_to, client) else None

    def revoke(self, token: str | None) -> None:
        if token:
            self.sessions.pop(_token_hash(token), None)

    def prune(self, now: float) -> None:
        for key in [k for k, (_o, _c, expires) in list(self.sessions.items()) if now >= expires]:
            self.sessions.pop(key, None)


def session_store() -> SessionStore:
    """This dashboard process's session store (shared by every browser session of the process)."""
    import streamlit as st

    @st.cache_resource(show_spinner=False)
    def _store() -> SessionStore:
        return SessionStore({})

    return _store()


def _keep_token_in_address() -> None:
    """Put this session's token back into the address (page navigation drops query parameters)."""
    import streamlit as st

    token = st.session_state.get(SESSION_TOKEN)
    if token and st.query_params.get(SESSION_PARAM) != token:
        st.query_params[SESSION_PARAM] = token


def _restore_from_token() -> str | None:
    """Log this (new) browser session in from ``?session=`` when the token is live; else drop it."""
    import time

    import streamlit as st

    token = st.query_params.get(SESSION_PARAM)
    if not token:
        return None
    operator = session_store().resolve(token, client_address(), time.time())
    if operator is None:
        del st.query_params[SESSION_PARAM]
        st.session_state["login-notice"] = "Your session has ended (expired, logged out or the dashboard restarted): log in again."
        return None
    st.session_state[SESSION_OPERATOR] = operator
    st.session_state[SESSION_AUTH_METHOD] = "password"
    st.session_state[SESSION_TOKEN] = token
    return operator


# --------------------------------------------------------------------------- Streamlit side

def _secret_values() -> dict[str, Any]:
    """st.secrets as a plain dict; {} when there is no secrets file (Streamlit raises then)."""
    import streamlit as st

    try:
        return {key: st.secrets[key] for key in st.secrets}
    except Exception:  # no secrets.toml, or an unreadable one: the gate falls back to the environment
        return {}


def streamlit_secrets() -> list[str]:
    """The secrets held in Streamlit's secrets file ([] outside a Streamlit run)."""
    from streamlit import runtime

    return secret_fields(_secret_values()) if runtime.exists() else []


def client_address() -> str:
    """The client's address as the throttle counts it (see the module docstring)."""
    import streamlit as st

    address = getattr(st.context, "ip_address", None)  # Streamlit ≥ 1.45; None for a loopback peer
    return address if isinstance(address, str) and address else LOCAL_CLIENT


def _oidc_user_name() -> str | None:
    import streamlit as st

    try:
        if not st.user.is_logged_in:
            return None
    except Exception:  # st.user without an auth configuration
        return None
    for claim in ("name", "preferred_username", "email", "sub"):
        value = st.user.get(claim)
        if value:
            return clean_operator_name(str(value))
    return DEFAULT_OPERATOR


def current_operator() -> str | None:
    """The logged-in operator's name in this session, or None."""
    import streamlit as st

    return st.session_state.get(SESSION_OPERATOR)


def logout() -> None:
    """Forget this session's login, revoke its exports (and end the OIDC session if it came that way)."""
    import streamlit as st

    from dashboard import exports, throttle

    method = st.session_state.get(SESSION_AUTH_METHOD)
    operator = st.session_state.get(SESSION_OPERATOR)
    session_store().revoke(st.session_state.get(SESSION_TOKEN))
    if SESSION_PARAM in st.query_params:
        del st.query_params[SESSION_PARAM]
    for key in (SESSION_OPERATOR, SESSION_AUTH_METHOD, SESSION_TOKEN):
        st.session_state.pop(key, None)
    exports.revoke_session_grant()
    if operator:
        throttle.record_logout(operator, client_address())
    if method == "oidc":
        st.logout()


def require_operator() -> str:
    """Return the operator's name, or draw the login form and stop the script run.

    Nothing else is drawn before this returns, so no data reaches a browser that has not logged in.
    """
    import streamlit as st

    config = gate_config(_secret_values(), os.environ, st.get_option("server.address"))
    if config.disabled:
        st.session_state[SESSION_OPERATOR] = st.session_state.get(SESSION_OPERATOR) or "local-operator"
        st.session_state[SESSION_AUTH_METHOD] = "off"
        return st.session_state[SESSION_OPERATOR]
    if config.providers:
        oidc_name = _oidc_user_name()
        if oidc_name:
            st.session_state[SESSION_OPERATOR] = oidc_name
            st.session_state[SESSION_AUTH_METHOD] = "oidc"
            return oidc_name
    operator = current_operator()
    if operator and st.session_state.get(SESSION_AUTH_METHOD) == "password":
        _keep_token_in_address()
        return operator
    if config.password:
        operator = _restore_from_token()
        if operator:
            return operator
    _draw_login(config)
    st.stop()
    raise AssertionError("unreachable: st.stop() ends the run")  # pragma: no cover


def _draw_login(config: GateConfig) -> None:
    import streamlit as st

    st.title("selfheal — operator login")
    notice = st.session_state.pop("login-notice", None)
    if notice:
        st.info(notice)
    if config.warning:
        st.warning(config.warning)
    if not config.usable:
        st.error("No login is configured: set SELFHEAL_DASHBOARD_PASSWORD (or [dashboard] password in "
                 ".streamlit/secrets.toml, or an [auth] OIDC section) and restart the dashboard.")
        return
    for provider in config.providers:
        label = "Log in with single sign-on" if provider is None else f"Log in with {provider}"
        if st.button(label, key=f"oidc-{provider or 'default'}"):
            st.login(provider) if provider else st.login()
    if not config.password:
        return
    with st.form("login", clear_on_submit=False):
        name = st.text_input("Operator name", value=DEFAULT_OPERATOR, max_chars=MAX_OPERATOR_NAME,
                             help="Recorded as the actor of every decision you make in the audit trail.")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return
    _attempt(clean_operator_name(name), password, config.password)


def _attempt(name: str, password: str, configured: str) -> None:
    """One login attempt through the shared throttle; logs in (and reruns) or says why not."""
    import streamlit as st

    from dashboard import throttle
    from dashboard.config import dashboard_settings
    from dashboard.safe import md
    from healing.config import load_settings

    client = client_address()
    try:
        admission = throttle.begin_attempt(name, client, dashboard_settings(load_settings()).throttle)
    except Exception as exc:  # no throttle, no login: a guess must never go uncounted
        st.error(f"Login is unavailable: the attempt could not be recorded ({md(type(exc).__name__)}).")
        return
    if not admission.allowed:
        st.error(f"Too many failed attempts: login is locked for {int(admission.retry_after_s) + 1} s.")
        return
    ok = verify_password(password, configured)
    throttle.finish_attempt(name, client, ok)
    if ok:
        import time

        ttl = dashboard_settings(load_settings()).session_ttl_s
        token = session_store().issue(name, client, ttl, time.time())
        st.session_state[SESSION_OPERATOR] = name
        st.session_state[SESSION_AUTH_METHOD] = "password"
        st.session_state[SESSION_TOKEN] = token
        st.query_params[SESSION_PARAM] = token
        st.rerun()
    st.error("Wrong password.")
