"""The Observer over the labelled real-log corpus (tests/tuning/replay): ≥ 95 % of the cases right, and
not one event on a healthy log.

A case is right when it yields exactly the expected events, in order, each with the expected class and
escalation, and a seed fix inside the labelled ranges (``fix: null`` = no fix, ``{}`` = not scored).
A case may state the running values the log does not print (``current``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from healing.tuning.observer import ObserverEvent, observe_file

REPLAY = Path(__file__).parent / "replay"
CASES = sorted(p.name[: -len(".expected.json")] for p in REPLAY.glob("*.expected.json"))


def mismatch(label: dict[str, Any], events: list[ObserverEvent]) -> str:
    """'' when the events match the label, else why not."""
    want = label["expected"]
    got = [e.to_json() for e in events]
    if len(got) != len(want):
        return f"{len(got)} events, expected {len(want)}: {[g['class'] for g in got]}"
    for w, g in zip(want, got, strict=True):
        if (w["class"], w["escalate"]) != (g["class"], g["escalate"]):
            return f"{g['class']} escalate={g['escalate']}, expected {w['class']} escalate={w['escalate']}"
        fix = w.get("fix")
        if fix is None and g["seed_fix"]:
            return f"fix {g['seed_fix']}, expected none"
        for param, (low, high) in (fix or {}).items():
            value = (g["seed_fix"] or {}).get(param)
            if value is None or not low - 1e-9 <= value <= high + 1e-9:
                return f"{param}={value}, expected {low}..{high}"
    return ""


def run_case(name: str) -> tuple[dict[str, Any], list[ObserverEvent]]:
    label = json.loads((REPLAY / f"{name}.expected.json").read_text(encoding="utf-8"))
    return label, observe_file(REPLAY / f"{name}.log", current=label.get("current"))


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 40
    assert all((REPLAY / f"{c}.log").is_file() for c in CASES)


def test_replay_score_is_at_least_95_percent() -> None:
    wrong = {}
    for name in CASES:
        label, events = run_case(name)
        if why := mismatch(label, events):
            wrong[name] = why
    score = (len(CASES) - len(wrong)) / len(CASES)
    assert score >= 0.95, wrong


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("healthy_")])
def test_healthy_logs_give_no_event(name: str) -> None:
    _label, events = run_case(name)
    assert events == []
