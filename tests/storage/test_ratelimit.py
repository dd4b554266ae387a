"""Tuning rate limits: window, cooldown, exponential backoff, and concurrent claimers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from storage.engine import get_engine, session_scope
from storage.ratelimit import RateLimits, claim_run_slot, finish_run, rate_limit_state
from tests.storage._workers import claim, run_in_processes

T0 = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)
NO_COOLDOWN = RateLimits(max_runs=3, cooldown_s=0)


def _claim(url: str, now: datetime, limits: RateLimits = NO_COOLDOWN, subsystem: str = "vllm"):
    with session_scope(url) as session:
        return claim_run_slot(session, subsystem, limits, now, intent_id=None, mode="dev")


def _state(url: str, now: datetime, limits: RateLimits = NO_COOLDOWN, subsystem: str = "vllm"):
    with session_scope(url, write=False) as session:
        return rate_limit_state(session, subsystem, limits, now)


def _finish(url: str, run_id: int, status: str, now: datetime) -> None:
    with session_scope(url) as session:
        finish_run(session, run_id, status, decision="escalated" if status == "failed" else "promoted", now=now)


def test_backoff_schedule() -> None:
    limits = RateLimits(backoff_base_s=100, backoff_factor=2, backoff_max_s=500)
    assert [limits.backoff_for(k) for k in range(6)] == [0.0, 100.0, 200.0, 400.0, 500.0, 500.0]
    assert RateLimits().backoff_for(10_000) == 48 * 3600
    with pytest.raises(ValueError, match="backoff_factor ≥ 1"):
        RateLimits(backoff_factor=0.5)


def test_three_runs_per_24h_then_the_oldest_frees_a_slot(db_url: str) -> None:
    granted = [_claim(db_url, T0 + k * H) for k in range(3)]
    assert [g.granted for g in granted] == [True, True, True]
    assert [g.run_id for g in granted] == [1, 2, 3]
    refused = _claim(db_url, T0 + 5 * H)
    assert (refused.granted, refused.run_id, refused.state.runs_used) == (False, None, 3)
    assert refused.state.next_allowed_at == T0 + 24 * H
    assert refused.state.reason == "3/3 runs used in the last 24h00m; next slot in 19h00m"
    # Exactly when the first run leaves the window (started_at > now - 24h is false) a slot opens.
    assert _claim(db_url, T0 + 24 * H - timedelta(seconds=1)).granted is False
    fourth = _claim(db_url, T0 + 24 * H)
    assert (fourth.granted, fourth.run_id, fourth.state.runs_used) == (True, 4, 2)
    # Subsystems are limited independently.
    assert _claim(db_url, T0 + 5 * H, subsystem="nginx").granted is True


def test_cooldown_after_each_run(db_url: str) -> None:
    limits = RateLimits(max_runs=3, cooldown_s=6 * 3600)
    assert _claim(db_url, T0, limits).granted
    state = _state(db_url, T0 + 2 * H, limits)
    assert (state.allowed, state.runs_used, state.cooldown_left_s, state.next_allowed_at) == (False, 1, 4 * 3600.0, T0 + 6 * H)
    assert state.reason == "cooldown: 4h00m left after the run started at 2026-05-01 00:00 UTC"
    assert _claim(db_url, T0 + 6 * H - timedelta(seconds=1), limits).granted is False
    assert _claim(db_url, T0 + 6 * H, limits).granted is True


def test_exponential_backoff_after_consecutive_failures(db_url: str) -> None:
    limits = RateLimits(max_runs=100, cooldown_s=0, backoff_base_s=3600, backoff_factor=2, backoff_max_s=5 * 3600)
    first = _claim(db_url, T0, limits)
    _finish(db_url, first.run_id, "failed", T0 + timedelta(minutes=10))
    state = _state(db_url, T0 + timedelta(minutes=20), limits)
    assert (state.consecutive_failures, state.backoff_s, state.backoff_left_s) == (1, 3600.0, 50 * 60.0)
    assert state.next_allowed_at == T0 + timedelta(minutes=70)
    assert state.reason == "backoff after 1 consecutive failed run(s): 50m00s left"
    assert _claim(db_url, T0 + timedelta(minutes=69), limits).granted is False

    second = _claim(db_url, T0 + timedelta(minutes=70), limits)
    assert second.granted
    _finish(db_url, second.run_id, "failed", T0 + 2 * H)
    state = _state(db_url, T0 + 2 * H, limits)
    assert (state.consecutive_failures, state.backoff_s, state.next_allowed_at) == (2, 7200.0, T0 + 4 * H)

    third = _claim(db_url, T0 + 4 * H, limits)
    _finish(db_url, third.run_id, "failed", T0 + 4 * H)
    state = _state(db_url, T0 + 4 * H, limits)
    assert (state.consecutive_failures, state.backoff_s) == (3, 14400.0)
    fourth = _claim(db_url, T0 + 8 * H, limits)
    _finish(db_url, fourth.run_id, "failed", T0 + 8 * H)
    assert _state(db_url, T0 + 8 * H, limits).backoff_s == 5 * 3600.0  # capped

    # A success resets the streak.
    fifth = _claim(db_url, T0 + 13 * H, limits)
    assert fifth.granted
    _finish(db_url, fifth.run_id, "succeeded", T0 + 13 * H)
    state = _state(db_url, T0 + 13 * H, limits)
    assert (state.consecutive_failures, state.backoff_s, state.allowed) == (0, 0.0, True)


def test_running_run_counts_and_does_not_reset_backoff(db_url: str) -> None:
    limits = RateLimits(max_runs=2, cooldown_s=0, backoff_base_s=3600)
    assert _claim(db_url, T0, limits).granted  # still running
    state = _state(db_url, T0 + H, limits)
    assert (state.runs_used, state.consecutive_failures, state.allowed) == (1, 0, True)


def test_claims_and_refusals_are_audited_and_counted(db_url: str) -> None:
    _claim(db_url, T0, RateLimits(max_runs=1))
    _claim(db_url, T0 + H, RateLimits(max_runs=1))
    with get_engine(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT kind, subject FROM audit_events ORDER BY seq").all() == [
            ("tuning.run_claimed", "vllm"), ("tuning.run_refused", "vllm")]
        assert conn.exec_driver_sql("SELECT claims_granted, claims_refused FROM tuning_rate_limits").one() == (1, 1)
        assert conn.exec_driver_sql("SELECT status, mode FROM tuning_runs").all() == [("running", "dev")]


def test_finish_run_rejects_bad_status(db_url: str) -> None:
    run_id = _claim(db_url, T0).run_id
    with pytest.raises(ValueError, match="status must be 'succeeded' or 'failed', got 'running'"):
        _finish(db_url, run_id, "running", T0)
    with pytest.raises(LookupError, match="tuning run 99 does not exist"):
        _finish(db_url, 99, "failed", T0)


def test_concurrent_thread_claimers_never_exceed_three(db_url: str) -> None:
    barrier = threading.Barrier(8)
    results: list[int | None] = []
    lock = threading.Lock()

    def claimer() -> None:
        barrier.wait()
        outcome = _claim(db_url, T0)
        with lock:
            results.append(outcome.run_id)

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r for r in results if r is not None) == [1, 2, 3]
    assert results.count(None) == 5


def test_concurrent_process_claimers_respect_limit_and_cooldown(db_url: str) -> None:
    now = T0.isoformat()
    # Without cooldown: 3 of 4 processes get a slot.
    outcomes = run_in_processes([(claim, (db_url, now, 3, 0.0)) for _ in range(4)])
    assert sorted(o for o in outcomes if o is not None) == [1, 2, 3]
    # With the 6 h cooldown, a day later: exactly one of three simultaneous claimers wins.
    later = (T0 + 25 * H).isoformat()
    outcomes = run_in_processes([(claim, (db_url, later, 3, 6 * 3600.0)) for _ in range(3)])
    assert sorted(o for o in outcomes if o is not None) == [4]
    with get_engine(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM tuning_runs").scalar_one() == 4


def test_a_claim_with_an_earlier_now_still_counts_the_runs_granted_before_it(db_url: str) -> None:
    """A claimer that read its clock before waiting for the lock (or a worker host whose clock lags)
    arrives with a ``now`` earlier than runs already granted: they must still count."""
    limits = RateLimits(max_runs=2, cooldown_s=0)
    assert _claim(db_url, T0 + 10 * timedelta(seconds=1), limits).granted
    assert _claim(db_url, T0 + 20 * timedelta(seconds=1), limits).granted
    late = _claim(db_url, T0 + timedelta(seconds=5), limits)  # its now is before both runs started
    assert (late.granted, late.state.runs_used, late.state.now) == (False, 2, T0 + timedelta(seconds=20))
    with get_engine(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM tuning_runs").scalar_one() == 2
