"""The Observer over the labelled real-log corpus (tests/tuning/replay), judged by the replay harness
(`selfheal tune replay`): ≥ 95 % of the cases right, and not one event on a log that expects none.

A case is right when it yields exactly the expected events, in order, each with the expected class and
escalation, and a seed fix inside the labelled ranges (healing.tuning.replay.judge).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from healing.tuning.replay import ReplayReport, run_replay

REPLAY = Path(__file__).parent / "replay"


@pytest.fixture(scope="module")
def report() -> ReplayReport:
    return run_replay(REPLAY)


def test_the_corpus_is_there(report: ReplayReport) -> None:
    assert len(report.results) >= 40
    assert {r.case.vendor for r in report.results} >= {"cuda", "rocm", "xpu", "cpu"}


def test_replay_score_is_at_least_95_percent(report: ReplayReport) -> None:
    wrong = {r.case.case_id: r.why for r in report.results if not r.passed}
    assert report.passed / len(report.results) >= 0.95, wrong


def test_logs_that_expect_no_event_give_none(report: ReplayReport) -> None:
    assert len(report.no_event_cases) >= 8
    assert {r.case.case_id: len(r.got) for r in report.no_event_cases if r.got} == {}
    assert report.false_events_on_healthy == 0
