"""Sessions survive a reload (issue 16): a password login's token in ?session=, stored hashed, bound to
the client, expiring, revoked at logout."""

from __future__ import annotations

import hashlib
from typing import Any

from streamlit.testing.v1 import AppTest

from dashboard.auth import SESSION_PARAM, SessionStore, session_store
from tests.dashboard.conftest import APP, OPERATOR, logged_in_app


def _reload(token: str) -> AppTest:
    """What F5 does: a new browser session on the same address."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params[SESSION_PARAM] = token
    return at.run()


def test_a_reload_keeps_the_login_and_logout_ends_it(seeded: dict[str, Any]) -> None:
    at = logged_in_app("views/promotions.py")
    token = at.query_params[SESSION_PARAM][0] if isinstance(at.query_params[SESSION_PARAM], list) \
        else at.query_params[SESSION_PARAM]
    assert len(token) == 43  # 32 random bytes, URL-safe base64
    stored = session_store().sessions
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored  # only the hash is kept

    again = _reload(token)
    assert not again.exception
    assert [t.value for t in again.title] == ["Overview"]
    assert again.session_state["operator"] == OPERATOR

    again.sidebar.button[0].click().run()  # "Log out"
    assert [t.value for t in again.title] == ["selfheal — operator login"]
    assert hashlib.sha256(token.encode()).hexdigest() not in session_store().sessions
    after = _reload(token)
    assert [t.value for t in after.title] == ["selfheal — operator login"]
    assert [i.value for i in after.info] == [
        "Your session has ended (expired, logged out or the dashboard restarted): log in again."]
    assert "operator" not in after.session_state


def test_a_forged_token_is_refused(seeded: dict[str, Any]) -> None:
    at = _reload("x" * 43)
    assert [t.value for t in at.title] == ["selfheal — operator login"]
    assert len(at.metric) == 0 and len(at.dataframe) == 0


def test_tokens_expire_and_are_bound_to_the_client() -> None:
    store = SessionStore({})
    token = store.issue("alice", "10.0.0.5", 3600, now=1000.0)
    assert store.resolve(token, "10.0.0.5", now=4599.0) == "alice"
    assert store.resolve(token, "10.0.0.6", now=4599.0) is None  # a leaked link used elsewhere
    assert store.resolve(token, "10.0.0.5", now=4600.0) is None  # expired, and forgotten
    assert store.sessions == {}
    other = store.issue("bob", "local", 60, now=0.0)
    store.revoke(other)
    assert store.resolve(other, "local", now=1.0) is None
    assert store.resolve("y" * 500, "local", now=1.0) is None
