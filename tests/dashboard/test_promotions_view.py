"""Promotions and Config tuning pages (issue 16): a second operator's late decision is reported, the
confirmation says who applies, runs and intents show the promotion's real state."""

from __future__ import annotations

import re
from typing import Any

from streamlit.testing.v1 import AppTest

from dashboard import actions
from storage.engine import session_scope
from storage.models import Promotion
from tests.dashboard.conftest import APP, PASSWORD, logged_in_app


def _as(name: str, page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.text_input[0].set_value(name)
    at.text_input[1].set_value(PASSWORD)
    at.button[0].click()
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _plain(values: Any) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", str(v.value)) for v in values]


def test_a_late_approval_is_reported_not_dropped(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    bob = _as("bob", "views/promotions.py")
    bob.button(key=f"approve-{pid}").click().run()  # bob is at the confirmation …
    warning = _plain(bob.warning)[0]
    assert "Approving applies the change at once: this page writes the new values" in warning
    assert "worker" not in warning
    actions.decide_promotion(pid, False, "alice", reason="not now")  # … when alice rejects it
    bob.button(key=f"confirm-{pid}").click().run()
    texts = _plain(bob.warning)
    assert len(texts) == 1 and re.fullmatch(
        rf"Promotion #{pid} was already rejected by alice at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC: "
        r"your approval was not recorded\.", texts[0]), texts
    with session_scope(write=False) as s:
        row = s.get(Promotion, pid)
        assert (row.status, row.decided_by) == ("rejected", "alice")


def test_a_click_on_a_card_decided_meanwhile_is_reported(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    carol = _as("carol", "views/promotions.py")  # carol's page still shows the card
    actions.decide_promotion(pid, True, "alice")
    carol.button(key=f"reject-{pid}").click().run()
    assert re.fullmatch(rf"Promotion #{pid} was already applied by alice at .* UTC: your rejection was not recorded\.",
                        _plain(carol.warning)[0])
    assert not [b for b in carol.button if b.key == f"confirm-{pid}"]


def test_tuning_page_shows_the_promotion_state_not_the_runs_snapshot(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    actions.decide_promotion(pid, False, "bob", reason="too risky")
    at = logged_in_app("views/tuning.py")
    intents = at.dataframe[0].value
    assert list(intents["outcome"]) == [f"REJECTED (promotion #{pid} rejected by bob)"]
    [run] = at.expander
    assert run.label.replace("\\", "").endswith(f" · promotion #{pid} rejected by bob")
    assert any(re.fullmatch(rf"Now: \*\*promotion #{pid} rejected by bob\*\* at .* UTC", m) for m in _plain(at.markdown))


def test_decided_table_has_the_note(seeded: dict[str, Any]) -> None:
    pid = seeded["promotion_id"]
    actions.decide_promotion(pid, False, "bob", reason="too risky")
    at = logged_in_app("views/promotions.py")
    assert at.dataframe[-1].value.to_dict("records")[0]["note"] == "too risky"


def test_tuning_page_keeps_a_trace_of_repeated_failures_while_blocked(seeded: dict[str, Any]) -> None:
    from datetime import UTC, datetime, timedelta

    from storage.models import TuningBlocked

    first = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    with session_scope() as s:
        s.add(TuningBlocked(subsystem="vllm", error_class="KV_CACHE_INSUFFICIENT", cause="rate_limited",
                            reason="3 runs in the last 24h", first_seen=first, last_seen=first + timedelta(minutes=40),
                            until=first + timedelta(hours=6), count=4))
    at = logged_in_app("views/tuning.py")
    assert "Failures seen while blocked" in [h.value for h in at.subheader]
    [row] = at.dataframe[1].value.to_dict("records")  # after the intents
    assert row == {"subsystem": "vllm", "class": "KV_CACHE_INSUFFICIENT", "cause": "rate limited", "times seen": 4,
                   "first seen": "2026-05-01 09:00:00 UTC", "last seen": "2026-05-01 09:40:00 UTC",
                   "blocked until": "2026-05-01 15:00:00 UTC", "reason": "3 runs in the last 24h"}


def test_the_overview_link_puts_its_promotion_first(seeded: dict[str, Any]) -> None:
    from datetime import UTC, datetime, timedelta

    with session_scope() as s:
        newer = Promotion(subsystem="vllm", old_values={"vllm.max_num_seqs": 16}, new_values={"vllm.max_num_seqs": 8},
                          reason="fewer sequences", created_at=datetime.now(UTC),
                          expires_at=datetime.now(UTC) + timedelta(hours=2))
        s.add(newer)
        s.flush()
        newer_id = newer.id
    at = _as("dave", "views/promotions.py")

    def order() -> list[int]:
        return [int(m) for m in re.findall(r"\*\*Promotion \\?#(\d+)\*\* · vllm · proposed", "\n".join(
            str(x.value) for x in at.markdown))]

    assert order() == [newer_id, seeded["promotion_id"]]  # newest first
    at.query_params["promotion"] = str(seeded["promotion_id"])
    at.run()
    assert order() == [seeded["promotion_id"], newer_id]


def test_the_promotion_card_shows_the_failure_and_the_canary_evidence(seeded: dict[str, Any]) -> None:
    from storage.models import TuningCandidate, TuningIntent

    with session_scope() as s:
        promotion = s.get(Promotion, seeded["promotion_id"])
        candidate = s.get(TuningCandidate, promotion.candidate_id)
        candidate.score_breakdown = {
            "origin": "seed_fix (rank 1): raises gpu_memory_utilization 0.8→0.9", "verdict": "pass", "score": 1.0,
            "baseline_ran": True,
            "metrics": {"latency_p50_ms": 66.063, "latency_p95_ms": 86.099, "throughput_tps": 162.647, "error_rate": 0.0,
                        "kv_headroom": 0.0844},
            "per_metric": {"latency_p95": {"metric": "latency_p95_ms", "value": 86.099, "reference": 90.5,
                                           "against": "baseline", "classification": "pass", "why": "86.099 ≤ 113.1"},
                           "errors": {"metric": "error_rate", "value": 0.0, "reference": 0.0, "against": "baseline",
                                      "classification": "pass", "why": "0 ≤ 0"}}}
        s.add(candidate)
        intent = s.exec(__import__("sqlmodel").select(TuningIntent)).first()
        intent.evidence = [{"line": 42, "text": "ValueError: No available memory for the cache blocks."}]
        intent.source = "/var/log/vllm.log"
        s.add(intent)
    at = logged_in_app("views/promotions.py")
    assert at.code[0].value == "42: ValueError: No available memory for the cache blocks."
    assert "Candidate: seed_fix (rank 1): raises gpu_memory_utilization 0.8→0.9" in _plain(at.caption)
    assert "Canary evidence, judged against the baseline run:" in _plain(at.caption)
    evidence = at.dataframe[1].value.to_dict("records")
    assert evidence == [
        {"metric": "latency p50 (ms)", "canary": "66.063", "compared with": "—", "verdict": "not judged", "why": "—"},
        {"metric": "latency p95 (ms)", "canary": "86.099", "compared with": "90.5 (baseline)", "verdict": "pass",
         "why": "86.099 ≤ 113.1"},
        {"metric": "throughput (tokens/s)", "canary": "162.647", "compared with": "—", "verdict": "not judged", "why": "—"},
        {"metric": "error rate", "canary": "0.0", "compared with": "0.0 (baseline)", "verdict": "pass", "why": "0 ≤ 0"},
        {"metric": "KV headroom", "canary": "0.0844", "compared with": "—", "verdict": "not judged", "why": "—"},
    ]
