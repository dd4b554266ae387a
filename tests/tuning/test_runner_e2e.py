"""End to end: simulator log → intent → candidates → pre-flight → canary (real subprocess) → promotion/escalation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS
from healing.tuning.runner import process_pending_intents, run_demo_tuning
from storage import tuning_queries as tq
from storage.engine import session_scope
from storage.models import Alert, AuditEvent, Promotion, TuningRun
from tests.tuning._orchestration import (
    TIGHT_FAILURE,
    canary_command,
    configure,
    db_url,  # noqa: F401 - fixture
    seed_profile,
    simulator_log,
    tight_tuning,
    write_target,
)


def _all(model: type) -> list[dict]:
    from sqlmodel import select

    with session_scope(write=False) as session:
        return [row.model_dump() for row in session.exec(select(model).order_by(model.id))]


def _audit_kinds() -> list[str]:
    return [e["kind"] for e in _all(AuditEvent)]


def test_the_seeds_scenario_is_rejected_at_preflight_and_nothing_is_promoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              db_url: str) -> None:  # noqa: F811
    card = seed_profile(tmp_path)
    log = tmp_path / "vllm.log"
    # vLLM at gmu 0.45 on the seed's card: "Available KV cache memory: -1.13 GiB" (1155 MiB short), then
    # "No available memory for the cache blocks".
    log.write_text(simulator_log(["--profile", str(card), "--gpu-memory-utilization", "0.45", "--max-num-seqs", "16",
                                  "--max-model-len", "4096"]))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.45, max_num_seqs=16, max_model_len=4096)
    settings = configure(tmp_path, monkeypatch, {
        "log_sources": [str(log)], "target_config": str(target), "gpu_profile": str(card),
        "preflight": {"gpu_source": "profile"}, "canary": {"command": canary_command(str(card))}}, mode="dev")

    summary = process_pending_intents(settings)

    assert [o["action"] for o in summary["observed"]] == ["intent"]
    [outcome] = summary["intents"]
    assert outcome["outcome"] == "ESCALATED" and outcome["decision"] == "preflight_rejected_all"
    with session_scope(write=False) as session:
        [intent] = tq.list_intents(session)
        candidates = tq.run_candidates(session, outcome["run_id"])
    assert intent["error_class"] == "kv_cache_no_memory"
    assert intent["seed_fix"] == {GMU: 0.6}
    assert intent["values"]["deficit_gib"] == 1.13 and intent["values"]["target_gpu_memory_utilization"] == 0.5446
    assert (intent["status"], intent["outcome"]) == ("archived", "ESCALATED")
    first = candidates[0]
    assert first["params"] == {GMU: 0.6}
    assert first["uncapped_targets"] == {GMU: 0.55}  # what the arithmetic wanted, below the bound 0.60
    assert first["preflight_ok"] is False
    assert first["preflight_reason"] == ("gpu_memory_utilization 0.6 asks for 7.20 GiB of the 12.00 GiB GPU, but resident "
                                         "services hold 5.93 GiB and leave 6.07 GiB: 1155 MiB short (profile seed-card)")
    # the grid only steps further up, which needs even more memory
    assert [c["params"][GMU] for c in candidates] == [0.6, 0.65, 0.7]
    assert all(c["preflight_ok"] is False and c["canary_gates"] is None for c in candidates)
    [alert] = _all(Alert)
    assert (alert["kind"], alert["reason"], alert["subject"]) == ("tuning_escalation", "preflight_rejected_all",
                                                                   "vllm: kv_cache_no_memory")
    assert "1155 MiB short" in alert["message"]
    [run] = _all(TuningRun)
    assert (run["status"], run["decision"], run["mode"]) == ("failed", "preflight_rejected_all", "dev")
    assert _all(Promotion) == []
    assert yaml.safe_load(target.read_text())["vllm"]["gpu_memory_utilization"] == 0.45  # untouched, even in dev
    kinds = _audit_kinds()
    assert kinds.count("tuning.candidate") == 3 and "tuning.canary" not in kinds
    assert kinds.index("tuning.intent") < kinds.index("tuning.run_claimed") < kinds.index("tuning.run_finished")
    assert "alert" in kinds and "promotion.created" not in kinds


def test_dev_mode_applies_the_winner_with_a_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(TIGHT_FAILURE))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    before = target.read_text()
    settings = configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target), mode="dev")

    summary = process_pending_intents(settings)

    [outcome] = summary["intents"]
    assert outcome["outcome"] == "CONFIG_TUNED" and outcome["decision"] == "applied"
    [cand] = outcome["candidates"]
    assert cand["params"] == {GMU: 0.9} and cand["preflight_ok"] is True
    assert cand["gates"] == {"started": True, "healthy": True, "no_memory_error": True, "probe_passed": True}
    assert cand["verdict"] == "pass"
    [promo] = _all(Promotion)
    assert (promo["status"], promo["decided_by"], promo["old_values"], promo["new_values"]) == (
        "applied", "tuning (dev mode)", {GMU: 0.8}, {GMU: 0.9})
    written = yaml.safe_load(target.read_text())
    # the nested form is migrated to vLLM's flat --config keys on the first apply
    assert written == {"served_model": "demo", "gpu-memory-utilization": 0.9, "max-num-seqs": 16, "max-model-len": 4096}
    assert Path(promo["backup_path"]).read_text() == before
    with session_scope(write=False) as session:
        [row] = tq.run_candidates(session, outcome["run_id"])
    # the canary really ran the candidate's value: the audited argv carries it next to its flag
    argv = row["score_breakdown"]["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert argv[argv.index("--max-num-seqs") + 1] == "16" and argv[argv.index("--max-model-len") + 1] == "4096"
    assert row["score_breakdown"]["against"] == "targets"  # the current config (0.8) cannot start: no baseline
    assert row["score_breakdown"]["metrics"]["errors"] == 0
    canary_events = [json.loads(e["payload"]) for e in _all(AuditEvent) if e["kind"] == "tuning.canary"]
    assert canary_events[0]["argv"] == argv and canary_events[0]["gates"]["healthy"] is True
    kinds = _audit_kinds()
    assert kinds.index("promotion.created") < kinds.index("promotion.approved") < kinds.index("promotion.applied")
    [run] = _all(TuningRun)
    assert (run["status"], run["decision"]) == ("succeeded", "applied")


def test_prod_mode_waits_for_approval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    from healing.tuning.promotions import approve_promotion

    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(TIGHT_FAILURE))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    settings = configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target), mode="prod")

    summary = process_pending_intents(settings)

    [outcome] = summary["intents"]
    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "pending_review")
    [promo] = _all(Promotion)
    assert promo["status"] == "pending_review" and promo["applied_at"] is None
    assert (promo["expires_at"] - promo["created_at"]).total_seconds() == 86400
    assert yaml.safe_load(target.read_text())["vllm"]["gpu_memory_utilization"] == 0.8  # nothing applied
    # a second cycle applies nothing either
    process_pending_intents(settings)
    assert _all(Promotion)[0]["status"] == "pending_review"
    assert yaml.safe_load(target.read_text())["vllm"]["gpu_memory_utilization"] == 0.8

    applied = approve_promotion(None, promo["id"], "alice", settings=settings)
    assert (applied["status"], applied["decided_by"]) == ("applied", "alice")
    assert yaml.safe_load(target.read_text())["gpu-memory-utilization"] == 0.9  # migrated to the flat vLLM form


def test_disabled_mode_records_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(TIGHT_FAILURE))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    settings = configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target), mode="disabled")

    summary = process_pending_intents(settings)

    assert [o["outcome"] for o in summary["intents"]] == ["HEALING_DISABLED"]
    with session_scope(write=False) as session:
        [intent] = tq.list_intents(session)
    assert (intent["status"], intent["outcome"]) == ("archived", "HEALING_DISABLED")
    assert intent["seed_fix"] == {GMU: 0.9}  # observed and recorded
    assert _all(TuningRun) == [] and _all(Promotion) == []


def test_env_mode_overrides_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(TIGHT_FAILURE))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target), mode="dev")
    monkeypatch.setenv("KLR_SELF_HEALING_MODE", "disabled")
    from healing.config import load_settings

    assert process_pending_intents(load_settings())["outcomes"] == {"HEALING_DISABLED": 1}


def test_inconclusive_is_never_promoted_silently_even_in_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              db_url: str) -> None:  # noqa: F811
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(TIGHT_FAILURE))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    # KV headroom at gmu 0.9 is 1.35 concurrent 4096-token requests for 16 seqs (0.0844 < its target 0.25): with the
    # deprecated weights choosing errors and kv_headroom only, 1 of 2 metrics passes, which these thresholds call marginal
    scoring = {"weights": {"latency": 0, "throughput": 0, "errors": 1, "kv_headroom": 1},
               "metrics": {"kv_cache_usage": False, "preemptions": False, "requests_waiting": False},
               "pass_threshold": 0.8, "marginal_threshold": 0.5}
    settings = configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target, scoring=scoring), mode="dev")

    [outcome] = process_pending_intents(settings)["intents"]

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "inconclusive")
    [promo] = _all(Promotion)
    assert promo["status"] == "pending_review" and promo["decided_by"] is None
    assert promo["reason"].startswith("inconclusive: score 0.5000 is between the marginal 0.5 and pass 0.8 thresholds")
    with session_scope(write=False) as session:
        [listed] = tq.list_promotions_detail(session)
    assert listed["inconclusive"] is True and listed["verdict"] == "inconclusive" and listed["score"] == 0.5
    assert yaml.safe_load(target.read_text())["vllm"]["gpu_memory_utilization"] == 0.8


def test_a_canary_that_fails_its_gates_escalates_all_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             db_url: str) -> None:  # noqa: F811
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(TIGHT_FAILURE))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    # the canary runs a card with less memory than pre-flight believes: 0.9 fails there too
    card = tmp_path / "smaller.json"
    card.write_text(json.dumps({"base": "tight", "weights_gib": 13.0, "startup_delay_s": 0}))
    section = tight_tuning(tmp_path, log, target)
    section["canary"]["command"] = canary_command(str(card))
    settings = configure(tmp_path, monkeypatch, section, mode="dev")

    [outcome] = process_pending_intents(settings)["intents"]

    assert (outcome["outcome"], outcome["decision"]) == ("ESCALATED", "all_failed")
    [cand] = outcome["candidates"]
    assert cand["gates"] == {"started": False, "healthy": False, "no_memory_error": False, "probe_passed": False}
    assert cand["canary_why"] == "hard gate(s) failed: started, healthy, no_memory_error, probe_passed"
    with session_scope(write=False) as session:
        [row] = tq.run_candidates(session, outcome["run_id"])
    assert row["score"] is None and row["score_breakdown"]["failed_gates"] == ["started", "healthy", "no_memory_error", "probe_passed"]
    assert "memory error in the canary log: kv_cache_no_memory" in row["score_breakdown"]["reason"]
    assert "No available memory for the cache blocks" in row["log_excerpt"]
    [alert] = _all(Alert)
    assert alert["reason"] == "all_failed"
    assert alert["message"].endswith(": failed (hard gate(s) failed: started, healthy, no_memory_error, probe_passed)")
    assert _all(Promotion) == []


def test_a_candidate_for_a_parameter_the_template_lacks_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    db_url: str) -> None:  # noqa: F811
    log = tmp_path / "vllm.log"
    # one 8192-token request needs 1 GiB of KV cache but 0.68 GiB are available: lower max_model_len
    log.write_text(simulator_log(["--model", "demo", "--profile", "tight", "--gpu-memory-utilization", "0.9",
                                  "--max-num-seqs", "16", "--max-model-len", "8192"]))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.9, max_num_seqs=16, max_model_len=8192)
    section = tight_tuning(tmp_path, log, target)
    command = canary_command("tight")
    i = command.index("--max-model-len")
    section["canary"]["command"] = command[:i] + command[i + 2:]
    settings = configure(tmp_path, monkeypatch, section, mode="dev")

    [outcome] = process_pending_intents(settings)["intents"]

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNING_FAILED", "template_refused_all")
    reasons = [c["preflight_reason"] for c in outcome["candidates"]]
    first = outcome["candidates"][0]
    assert first["params"] == {MAX_MODEL_LEN: 5120}  # vLLM's estimate 5520, floored to the 512 grid
    assert reasons[0] == "no placeholder for vllm.max_model_len in tuning.canary.command"
    assert all(r.startswith("no placeholder for vllm.max_model_len") for r in reasons)
    assert _all(Promotion) == [] and yaml.safe_load(target.read_text())["vllm"]["max_model_len"] == 8192


def test_observer_escalations_become_alerts_and_archived_intents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 db_url: str) -> None:  # noqa: F811
    log = tmp_path / "vllm.log"
    # the seed card at gmu 0.6: free/total says 0.45 would be needed, below the bound → out_of_bounds
    log.write_text(simulator_log(["--model", "demo", "--profile", "seed", "--gpu-memory-utilization", "0.6"]))
    settings = configure(tmp_path, monkeypatch, {"log_sources": [str(log)], "canary": {"command": canary_command("seed")}})

    summary = process_pending_intents(settings)

    [observed] = summary["observed"]
    assert (observed["action"], observed["reason"]) == ("escalated", "out_of_bounds")
    assert summary["intents"] == []
    [alert] = _all(Alert)
    assert (alert["reason"], alert["severity"], alert["webhook_state"]) == ("out_of_bounds", "critical", "none")
    assert "below the bound 0.6" in alert["message"]
    with session_scope(write=False) as session:
        [intent] = tq.list_intents(session)
    assert (intent["status"], intent["outcome"], intent["seed_fix"]) == ("archived", "ESCALATED", None)
    assert intent["reason"].startswith("out_of_bounds: only 6.07 of 12 GiB are free")
    assert _all(TuningRun) == []


def test_log_sources_are_read_once_across_restarts_and_the_cooldown_stops_floods(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    from healing.tuning import sources

    log = tmp_path / "vllm.log"
    failure = simulator_log(TIGHT_FAILURE)
    log.write_text(failure)
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=4096)
    settings = configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target), mode="disabled")

    first = process_pending_intents(settings)
    assert [o["action"] for o in first["observed"]] == ["intent"]
    # the same failure again (vLLM restarted by systemd): within the cooldown it is suppressed …
    with log.open("a") as fh:
        fh.write(failure)
    again = process_pending_intents(settings)["observed"]
    assert [(o["action"], o["why"]) for o in again] == [("suppressed", "cooldown (this process)")]
    # "restart": the in-process cooldowns are gone; the persisted follower state prevents re-reading
    sources._cooldowns.clear()
    assert process_pending_intents(settings)["observed"] == []
    state = json.loads((settings.home / "tuning" / "log_sources.json").read_text())
    assert state[str(log)]["offset"] == 2 * len(failure.encode())
    # … and after the restart the newest stored intent of the class still suppresses a repeat
    with log.open("a") as fh:
        fh.write(failure)
    [after_restart] = process_pending_intents(settings)["observed"]
    assert after_restart["action"] == "suppressed" and after_restart["why"].startswith("cooldown (intent at ")
    with session_scope(write=False) as session:
        assert len(tq.list_intents(session)) == 1


def test_run_demo_tuning_leaves_a_pending_promotion(db_url: str) -> None:  # noqa: F811
    from healing.config import load_settings

    result = run_demo_tuning(load_settings())

    promo = result["promotion"]
    assert (promo["status"], promo["subsystem"], promo["new_values"]) == ("pending_review", "vllm-demo", {GMU: 0.9})
    assert result["summary"].startswith("intent 1 → CONFIG_TUNED: promotion 1 pending_review: vllm.gpu_memory_utilization=0.9")
    assert yaml.safe_load(Path(result["target_config"]).read_text())["vllm"]["gpu_memory_utilization"] == 0.8


def test_a_running_config_is_the_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    # a soft signal (KV cache pressure) while the service runs: the current config starts, so it is the baseline
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.6, max_num_seqs=16, max_model_len=4096)
    section = tight_tuning(tmp_path, tmp_path / "unused.log", target, gpu_profile="default")
    section["canary"]["command"] = canary_command("default")
    settings = configure(tmp_path, monkeypatch, section, mode="prod")
    with session_scope() as session:
        tq.create_intent(session, subsystem="vllm", error_class="kv_cache_preemption", values={"signals": 3},
                         seed_fix={GMU: 0.65}, evidence=[], source="test", reason="3 stats lines with a full KV cache")

    [outcome] = process_pending_intents(settings)["intents"]

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "pending_review")
    with session_scope(write=False) as session:
        row, *others = tq.run_candidates(session, outcome["run_id"])
    assert row["params"] == {GMU: 0.65} and row["score_breakdown"]["against"] == "baseline"
    # the minimal fix passed: the bigger steps of the grid were never started
    assert [o["params"] for o in others] == [{GMU: 0.7}, {GMU: 0.65, MAX_NUM_SEQS: 14}]
    assert all(o["preflight_ok"] and o["canary_gates"] is None for o in others)
    assert row["score_breakdown"]["baseline_ran"] is True
    [run] = _all(TuningRun)
    assert run["baseline_score"] is not None and 0 < run["baseline_score"] <= 1
    [baseline] = [json.loads(e["payload"]) for e in _all(AuditEvent) if e["kind"] == "tuning.baseline"]
    assert baseline["note"] == "baseline ran and passed its gates" and baseline["gates"]["healthy"] is True
    argv = baseline["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.6"


def test_escalations_go_to_the_webhook_notifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    class Recorder:
        def __init__(self) -> None:
            self.submitted: list[int] = []

        def submit(self, alert_id: int) -> None:
            self.submitted.append(alert_id)

    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(["--model", "demo", "--profile", "seed", "--gpu-memory-utilization", "0.6"]))
    settings = configure(tmp_path, monkeypatch, {"log_sources": [str(log)]},
                         healing={"notification": {"webhook": "http://127.0.0.1:9/hook"}})
    recorder = Recorder()

    process_pending_intents(settings, notifier=recorder)

    [alert] = _all(Alert)
    assert recorder.submitted == [alert["id"]] and alert["webhook_state"] == "pending"
