"""End to end with the vLLM 0.33 simulator: a baseline and candidates under probe load, judged on /metrics too."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, default_settings
from healing.tuning.canary import run_canary, score_result
from healing.tuning.runner import process_pending_intents
from healing.tuning.runner_config import parse_runner_settings
from storage import tuning_queries as tq
from storage.engine import session_scope
from tests.tuning._orchestration import (
    canary_command,
    configure,
    db_url,  # noqa: F401 - fixture
    tight_tuning,
    write_target,
)

SETTINGS = default_settings()
BASELINE = {GMU: Decimal("0.6"), MAX_NUM_SEQS: Decimal(16), MAX_MODEL_LEN: Decimal(4096)}


def sim_033(profile: str) -> list[str]:
    """The simulator template in its default vLLM 0.33 mode (the shared helper pins the 0.10 log format)."""
    command = canary_command(profile)
    at = command.index("--log-format")
    return command[:at] + command[at + 2:]


@pytest.mark.slow
def test_baseline_and_candidates_judged_on_metrics_from_the_simulator(tmp_path: Path) -> None:
    rs = parse_runner_settings({"canary": {
        "command": sim_033("default"), "start_timeout_s": 30, "stop_grace_s": 3, "metrics_interval_s": 0.05,
        "probe": {"requests": 16, "concurrency": 8, "max_tokens": 32}}})

    baseline = run_canary(rs.canary, BASELINE, SETTINGS, tmp_path, "baseline")
    roomy = run_canary(rs.canary, {**BASELINE, GMU: Decimal("0.65")}, SETTINGS, tmp_path, "roomy")
    # two sequences at a time for a load of 8 in flight: the rest wait
    narrow = run_canary(rs.canary, {**BASELINE, MAX_NUM_SEQS: Decimal(2)}, SETTINGS, tmp_path, "narrow")

    for run in (baseline, roomy, narrow):
        assert run.passed, run.reason
        assert "--log-format" not in run.argv and "version 0.33.0" in Path(run.log_path).read_text()
        m = run.metrics
        assert m["api"] == "chat" and m["errors"] == 0
        assert m["metrics_source"] == "scraped" and m["metrics_scrapes"] >= 2
        assert isinstance(m["kv_cache_usage_max"], float) and 0 < m["kv_cache_usage_max"] <= 1
        assert isinstance(m["preemptions"], float) and m["preemptions"] >= 0
        assert isinstance(m["requests_waiting_max"], float) and isinstance(m["e2e_p95_ms"], float) and m["e2e_p95_ms"] > 0
    assert baseline.metrics["requests_waiting_max"] <= 1.0
    assert narrow.metrics["requests_waiting_max"] >= 4.0

    _score, breakdown, _verdict = score_result(roomy, baseline, rs.scoring)
    per = breakdown["per_metric"]
    assert breakdown["against"] == "baseline" and breakdown["no_data"] == []
    for name in ("kv_cache_usage", "preemptions", "requests_waiting"):
        assert per[name]["against"] == "baseline" and isinstance(per[name]["value"], float), name
        assert per[name]["reference"] == baseline.metrics[per[name]["metric"]]
    assert per["requests_waiting"]["classification"] == "pass"

    _score, breakdown, _verdict = score_result(narrow, baseline, rs.scoring)
    assert breakdown["per_metric"]["requests_waiting"]["classification"] == "high"
    assert "requests_waiting" not in breakdown["passed"]


@pytest.mark.slow
def test_the_stored_breakdown_judges_the_canarys_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        db_url: str) -> None:  # noqa: F811
    # the running config starts (a soft signal: KV cache pressure), so it is the baseline of the candidate
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.6, max_num_seqs=16, max_model_len=4096)
    section = tight_tuning(tmp_path, tmp_path / "unused.log", target, gpu_profile="default")
    section["canary"].update(command=sim_033("default"), metrics_interval_s=0.05)
    # four requests on two shared cores: wall-clock latency and throughput swing more than the defaults allow
    section["scoring"] = {"metrics": {"latency_p95": {"tolerance": 4}, "throughput": {"tolerance": 0.9}}}
    settings = configure(tmp_path, monkeypatch, section, mode="prod")
    with session_scope() as session:
        tq.create_intent(session, subsystem="vllm", error_class="kv_cache_preemption", values={"signals": 3},
                         seed_fix={GMU: 0.65}, evidence=[], source="test", reason="3 stats lines with a full KV cache")

    [outcome] = process_pending_intents(settings)["intents"]

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "pending_review")
    with session_scope(write=False) as session:
        row, *_others = tq.run_candidates(session, outcome["run_id"])
    b = row["score_breakdown"]
    assert (b["verdict"], b["against"], b["baseline_ran"], b["no_data"]) == ("pass", "baseline", True, [])
    assert b["metrics"]["api"] == "chat" and b["metrics"]["metrics_source"] == "scraped"
    for name in ("kv_cache_usage", "preemptions", "requests_waiting"):
        entry = b["per_metric"][name]
        assert isinstance(entry["value"], float) and isinstance(entry["reference"], float), name
        assert entry["against"] == "baseline" and entry["classification"] == "pass", name
    assert b["score"] == row["score"] == 1.0
    assert b["why"] == "6 of 6 metrics pass (1 ≥ pass threshold 0.8)"
