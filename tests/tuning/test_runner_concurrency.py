"""Concurrent triggers (threads and processes) never exceed the rate limits, and each intent is handled once."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import select

from healing.tuning.actuators import GMU
from storage import tuning_queries as tq
from storage.engine import session_scope
from storage.models import TuningIntent, TuningRun
from tests.storage._workers import run_in_processes
from tests.tuning._orchestration import (
    canary_command,
    configure,
    db_url,  # noqa: F401 - fixture
    drain_intents,
    write_target,
)

INTENTS = 8


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cooldown_s: float) -> None:
    # Every run ends fast at pre-flight (a card whose resident services leave 1 GiB): a failed run,
    # which with backoff_base_s 0 does not block the next one — only the window and the cooldown do.
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.6, max_num_seqs=16, max_model_len=4096)
    configure(tmp_path, monkeypatch, {
        "target_config": str(target),
        "gpu_profile": {"total_gib": 12, "resident_gib": 11},
        "preflight": {"gpu_source": "profile"},
        "intents_per_call": 1,
        "rate_limits": {"max_runs": 3, "cooldown_s": cooldown_s, "backoff_base_s": 0},
        "canary": {"command": canary_command("seed")},
    }, mode="dev")
    with session_scope() as session:
        for i in range(INTENTS):
            tq.create_intent(session, subsystem="vllm", error_class="kv_cache_no_memory",
                             values={"gpu_memory_utilization": 0.6, "n": i}, seed_fix={GMU: 0.7}, evidence=[], source="test",
                             reason="test intent")


def _check(outcomes: list[str], granted: int) -> None:
    assert Counter(outcomes) == Counter({"ESCALATED": granted, "RATE_LIMITED": INTENTS - granted})
    with session_scope(write=False) as session:
        runs = list(session.exec(select(TuningRun)))
        intents = list(session.exec(select(TuningIntent)))
    assert len(runs) == granted
    assert all(r.status == "failed" and r.decision == "preflight_rejected_all" for r in runs)
    # each intent was handled exactly once, and every run belongs to a different intent
    assert all(i.status == "archived" for i in intents)
    assert len({r.intent_id for r in runs}) == granted


@pytest.mark.parametrize("cooldown_s, granted", [(0, 3), (6 * 3600, 1)])
def test_threads_never_exceed_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                         cooldown_s: float, granted: int) -> None:
    _setup(tmp_path, monkeypatch, cooldown_s)
    results: list[list[str]] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def worker() -> None:
        try:
            go.wait()
            results.append(drain_intents())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    _check([o for r in results for o in r], granted)


def test_processes_never_exceed_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    _setup(tmp_path, monkeypatch, 0)
    results = run_in_processes([(drain_intents, ()) for _ in range(3)], timeout=120)
    _check([o for r in results for o in r], 3)


def test_work_left_by_a_killed_process_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    from datetime import UTC, datetime, timedelta

    from healing.tuning.runner import TuningRunner
    from storage.ratelimit import RateLimits, claim_run_slot

    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    settings = configure(tmp_path, monkeypatch, {"stale_after_s": 3600})
    with session_scope() as session:
        ids = [tq.create_intent(session, subsystem="vllm", error_class="kv_cache_no_memory", values={}, seed_fix={GMU: 0.7},
                                evidence=[], source="test", reason="r", now=t0 + timedelta(minutes=i))["id"] for i in range(3)]
        tq.claim_open_intents(session, limit=3)
        claim_run_slot(session, "vllm", RateLimits(), t0, intent_id=ids[0], mode="prod")  # killed during this run
    # ids[1]: killed between claiming the intent and claiming a slot; ids[2]: claimed moments ago, too young
    runner = TuningRunner(settings)
    assert runner.recover_interrupted(t0 + timedelta(minutes=59)) == {"runs": [], "intents": []}

    recovered = runner.recover_interrupted(t0 + timedelta(hours=1, minutes=1, seconds=30))

    assert recovered == {"runs": [1], "intents": [ids[1]]}
    with session_scope(write=False) as session:
        intents = {i["id"]: i for i in tq.list_intents(session)}
        [run] = tq.list_runs(session)
    assert (run["status"], run["decision"]) == ("failed", "interrupted")
    assert [(intents[i]["status"], intents[i]["outcome"]) for i in ids] == [
        ("archived", "CONFIG_TUNING_FAILED"), ("archived", "CONFIG_TUNING_FAILED"), ("processing", None)]
    assert intents[ids[0]]["reason"] == "interrupted: still unfinished after 3600 s (the process running it stopped)"
