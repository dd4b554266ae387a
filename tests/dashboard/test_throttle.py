"""Login throttling in the database: per operator name and per client, across sessions, audited —
on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import throttle
from dashboard.throttle import ThrottlePolicy
from storage import queries
from storage.engine import session_scope
from tests.dashboard.conftest import APP, PASSWORD

POLICY = ThrottlePolicy(max_failures=5, window_s=900, lock_s=60, lock_max_s=3600)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, _isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from storage.migrate import upgrade

    if request.param == "postgresql":
        monkeypatch.setenv("SELFHEAL_DATABASE_URL", request.getfixturevalue("postgres_server").fresh_database())
    upgrade()
    from healing.config import load_settings

    return load_settings().database_url


def _fail(name: str, client: str, at: datetime) -> throttle.Admission:
    admission = throttle.begin_attempt(name, client, POLICY, now=at)
    if admission.allowed:
        throttle.finish_attempt(name, client, False, now=at)
    return admission


def _events(kind: str) -> list[dict[str, Any]]:
    with session_scope(write=False) as s:
        return list(reversed(queries.audit_page(s, kind=kind)))


def test_lock_doubles_after_each_further_failure_and_is_capped() -> None:
    assert [POLICY.lock_for(n) for n in (1, 4, 5, 6, 7, 10, 11, 12, 5000)] == [0, 0, 60, 120, 240, 1920, 3600, 3600, 3600]


def test_five_failures_lock_the_name_and_the_client_even_for_the_right_password(url: str) -> None:
    # Five guesses from five different clients under one name …
    for i in range(5):
        assert _fail("Alice", f"10.0.0.{i}", T0 + timedelta(seconds=i)).allowed
    # … lock the name, whatever the client and the case of the name; the right password is not even compared.
    refused = throttle.begin_attempt("ALICE", "10.0.0.99", POLICY, now=T0 + timedelta(seconds=10))
    assert (refused.allowed, refused.locked, refused.retry_after_s) == (False, ("operator",), 54.0)
    # Another name from a fresh client is not affected.
    assert throttle.begin_attempt("bob", "10.0.0.100", POLICY, now=T0 + timedelta(seconds=10)).allowed

    failures = _events(throttle.KIND_FAILURE)
    assert [(e["subject"], e["actor"], e["payload"]["failures"]["operator"]) for e in failures] == [
        ("Alice", "dashboard", n) for n in range(1, 6)]
    assert failures[-1]["payload"]["locked_until"] == (T0 + timedelta(seconds=4 + 60)).isoformat()
    locked = _events(throttle.KIND_LOCKED)
    assert [(e["subject"], e["payload"]["client"], e["payload"]["locked"]) for e in locked] == [
        ("ALICE", "10.0.0.99", ["operator"])]


def test_many_names_from_one_client_lock_the_client(url: str) -> None:
    for i in range(5):
        assert _fail(f"name-{i}", "203.0.113.7", T0 + timedelta(seconds=i)).allowed
    refused = throttle.begin_attempt("someone-new", "203.0.113.7", POLICY, now=T0 + timedelta(seconds=5))
    assert (refused.allowed, refused.locked) == (False, ("client",))


def test_after_the_lock_each_failure_doubles_it_and_a_success_clears_the_streak(url: str) -> None:
    at = T0
    for _ in range(5):
        _fail("carol", "c1", at)
    assert not throttle.begin_attempt("carol", "c1", POLICY, now=at + timedelta(seconds=59)).allowed
    at += timedelta(seconds=61)  # the first lock (60 s) is over: one more guess is compared …
    assert _fail("carol", "c1", at).allowed
    refused = throttle.begin_attempt("carol", "c1", POLICY, now=at + timedelta(seconds=1))
    assert (refused.allowed, refused.retry_after_s) == (False, 119.0)  # … and locks for 120 s
    at += timedelta(seconds=121)
    assert throttle.begin_attempt("carol", "c1", POLICY, now=at).allowed
    throttle.finish_attempt("carol", "c1", True, now=at)
    assert _events(throttle.KIND_SUCCESS)[-1]["actor"] == "carol"
    # The streak starts again at one: four more failures do not lock.
    for i in range(4):
        assert _fail("carol", "c1", at + timedelta(seconds=i + 1)).allowed
    assert throttle.begin_attempt("carol", "c1", POLICY, now=at + timedelta(seconds=10)).allowed


def test_a_quiet_window_ends_the_streak(url: str) -> None:
    for i in range(4):
        _fail("dave", "d1", T0 + timedelta(seconds=i))
    later = T0 + timedelta(seconds=3 + 901)
    assert _fail("dave", "d1", later).allowed  # streak restarted at 1, not 5
    assert throttle.begin_attempt("dave", "d1", POLICY, now=later + timedelta(seconds=1)).allowed


def test_login_form_is_throttled_across_fresh_sessions(url: str) -> None:
    """Six fresh AppTest sessions: five wrong guesses, then the right password is refused as locked."""
    def attempt(password: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        at.text_input[0].set_value("mallory")
        at.text_input[1].set_value(password)
        at.button[0].click()
        return at.run()

    for _ in range(5):
        assert [e.value for e in attempt("guess").error] == ["Wrong password."]
    at = attempt(PASSWORD)
    [message] = [e.value for e in at.error]
    assert re.fullmatch(r"Too many failed attempts: login is locked for (5\d|60) s\.", message), message
    assert "operator" not in at.session_state
    [locked] = _events(throttle.KIND_LOCKED)
    assert (locked["subject"], locked["payload"]["client"], locked["payload"]["locked"]) == (
        "mallory", "local", ["client", "operator"])


def test_parallel_guesses_cannot_slip_in_before_the_count_moves(url: str) -> None:
    """Twenty attempts at once (threads, separate connections): exactly five may compare a password."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        admissions = list(pool.map(lambda i: throttle.begin_attempt(f"eve-{i}", "198.51.100.1", POLICY, now=T0),
                                   range(20)))
    assert sum(a.allowed for a in admissions) == 5
    assert len(_events(throttle.KIND_LOCKED)) == 15
