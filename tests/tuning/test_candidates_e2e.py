"""End to end with the real simulator: the max_model_len a candidate keeps must fit its KV budget.

The bug on main: at gmu 0.8 / max_model_len 8192 on the "tight" card vLLM fails with "No available memory
for the cache blocks"; the only candidate, gmu 0.9, passed pre-flight ("fits … KV budget 0.68 GiB"),
the canary then failed with kv_cache_one_request_does_not_fit, and the run escalated all_failed without
trying gmu 0.9 together with a shorter max_model_len. And with gmu headroom, max_model_len was cut anyway.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN
from healing.tuning.promotions import read_target_values
from healing.tuning.runner import process_pending_intents
from healing.tuning.simulator import SimConfig, load_profile, plan_memory
from storage import tuning_queries as tq
from storage.engine import session_scope
from tests.tuning._orchestration import (
    canary_command,
    configure,
    db_url,  # noqa: F401 - fixture
    simulator_log,
    tight_tuning,
    write_target,
)


def _flags(profile: str, gmu: str, mml: int) -> list[str]:
    return ["--model", "demo", "--profile", profile, "--gpu-memory-utilization", gmu, "--max-num-seqs", "16", "--max-model-len", str(mml)]


def test_without_gmu_headroom_gmu_and_max_model_len_move_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   db_url: str) -> None:  # noqa: F811
    # what main tried is exactly what the simulator refuses: one 8192-token request does not fit at gmu 0.9
    assert plan_memory(load_profile("tight"), SimConfig(Decimal("0.9"), 16, 8192)).failure == "C'"
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(_flags("tight", "0.8", 8192)))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.8, max_num_seqs=16, max_model_len=8192)
    settings = configure(tmp_path, monkeypatch, tight_tuning(tmp_path, log, target), mode="dev")

    [outcome] = process_pending_intents(settings)["intents"]

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "applied")
    first, second = outcome["candidates"]
    assert (first["rank"], first["params"], first["preflight_ok"], first["verdict"]) == (
        1, {GMU: 0.9, MAX_MODEL_LEN: 5120}, True, "pass")
    assert first["why"] == ("raises gpu_memory_utilization 0.8→0.9 (+1.58 GiB of the GPU); cuts max_model_len 8192→5120: "
                            "gives up 3,072 tokens of context (38%)")
    assert first["preflight_reason"] == ("fits: 14.17 of 15.50 GiB free, KV cache budget 0.67 GiB (5,488 tokens ≥ max_model_len "
                                         "5120) (profile tight)")
    # the Observer's seed is recorded, rejected with the arithmetic, and never started
    assert (second["rank"], second["params"], second["preflight_ok"], second.get("verdict")) == (2, {GMU: 0.9}, False, None)
    assert second["preflight_reason"] == (
        "max_model_len 8192 needs 1.00 GiB of KV cache (8,192 tokens × 128 KiB/token), gpu_memory_utilization 0.9 leaves 0.67 GiB "
        "(printed KV cache -0.90 GiB at gpu_memory_utilization 0.8 less 0.005 GiB of print rounding + 1.58 GiB): "
        "2,704 tokens short (profile tight)")
    written = read_target_values(target)
    assert (written[GMU], written[MAX_MODEL_LEN]) == (Decimal("0.9"), 5120)
    with session_scope(write=False) as session:
        rows = tq.run_candidates(session, outcome["run_id"])
    assert [r["score_breakdown"]["origin"] for r in rows] == [
        "memory_and_length (rank 1): raises gpu_memory_utilization 0.8→0.9 (+1.58 GiB of the GPU); cuts max_model_len "
        "8192→5120: gives up 3,072 tokens of context (38%)",
        "seed_fix (rank 2): keeps max_model_len 8192; raises gpu_memory_utilization 0.8→0.9 (+1.58 GiB of the GPU)"]
    argv = rows[0]["score_breakdown"]["argv"]
    assert argv[argv.index("--max-model-len") + 1] == "5120" and argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"


def test_with_gmu_headroom_max_model_len_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:  # noqa: F811
    # the tight card with 11 GiB of weights: at 0.85 one 8192-token request needs 1.00 GiB, 0.79 GiB are there
    card = tmp_path / "headroom.json"
    card.write_text(json.dumps({"base": "tight", "weights_gib": 11.0, "startup_delay_s": 0}), encoding="utf-8")
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(_flags(str(card), "0.85", 8192)))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=0.85, max_num_seqs=16, max_model_len=8192)
    section = tight_tuning(tmp_path, log, target, gpu_profile=str(card))
    section["canary"]["command"] = canary_command(str(card))
    settings = configure(tmp_path, monkeypatch, section, mode="dev")

    [outcome] = process_pending_intents(settings)["intents"]

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "applied")
    with session_scope(write=False) as session:
        [intent] = tq.list_intents(session)
    assert intent["seed_fix"] == {MAX_MODEL_LEN: 6144}  # main promoted this cut: 2,048 tokens of context lost
    ran = [c for c in outcome["candidates"] if c.get("verdict")]
    assert [(c["rank"], c["params"], c["verdict"]) for c in ran] == [(1, {GMU: 0.9}, "pass")]
    assert ran[0]["why"] == "keeps max_model_len 8192; raises gpu_memory_utilization 0.85→0.9 (+0.79 GiB of the GPU)"
    assert [c["params"] for c in outcome["candidates"][1:]] == [{MAX_MODEL_LEN: 6144}, {MAX_MODEL_LEN: 5632}]
    written = read_target_values(target)
    assert (written[GMU], written[MAX_MODEL_LEN]) == (Decimal("0.9"), 8192)


# --------------------------------------------------------------------------- the same in vLLM 0.33's arithmetic

def _card(tmp_path: Path, weights: float) -> str:
    """The tight card with other weights; 0.33 counts its 0.50 GiB of CUDA graphs inside the KV budget."""
    card = tmp_path / f"card-{weights}.json"
    card.write_text(json.dumps({"base": "tight", "weights_gib": weights, "startup_delay_s": 0}), encoding="utf-8")
    return str(card)


def _run_033(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, card: str, gmu: str) -> tuple[dict, Path]:
    log = tmp_path / "vllm.log"
    log.write_text(simulator_log(_flags(card, gmu, 8192) + ["--log-format", "0.33"]))
    target = write_target(tmp_path / "vllm.yaml", gpu_memory_utilization=float(gmu), max_num_seqs=16, max_model_len=8192)
    section = tight_tuning(tmp_path, log, target, gpu_profile=card)
    command = canary_command(card)
    command[command.index("--log-format") + 1] = "0.33"
    section["canary"]["command"] = command
    settings = configure(tmp_path, monkeypatch, section, mode="dev")
    [outcome] = process_pending_intents(settings)["intents"]
    return outcome, target


def test_033_without_headroom_the_two_parameter_candidate_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                db_url: str) -> None:  # noqa: F811
    # 11.4 GiB of weights: at 0.8 the budget is 12.6 − 11.4 − 1.6 − 0.5 (graphs) = −0.9 GiB; at 0.9 it is 0.675 GiB
    card = _card(tmp_path, 11.4)
    assert plan_memory(load_profile(card), SimConfig(Decimal("0.9"), 16, 8192, log_format="0.33")).failure == "C'"
    outcome, target = _run_033(tmp_path, monkeypatch, card, "0.8")

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "applied")
    first, second = outcome["candidates"]
    assert (first["params"], first["verdict"], second["params"], second["preflight_ok"]) == (
        {GMU: 0.9, MAX_MODEL_LEN: 5120}, "pass", {GMU: 0.9}, False)
    assert second["preflight_reason"].startswith("max_model_len 8192 needs 1.00 GiB of KV cache (8,192 tokens × 128 KiB/token), "
                                                 "gpu_memory_utilization 0.9 leaves 0.67 GiB (printed KV cache -0.90 GiB")
    assert second["preflight_reason"].endswith("− one null block of 2.00 MiB): 2,720 tokens short (profile card-11.4)")
    written = read_target_values(target)
    assert (written[GMU], written[MAX_MODEL_LEN]) == (Decimal("0.9"), 5120)


def test_033_with_headroom_gmu_is_raised_and_max_model_len_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 db_url: str) -> None:  # noqa: F811
    # 10.5 GiB of weights: at 0.85 one 8192-token request needs 1.00 GiB and 0.79 GiB are there; 0.9 gives 1.57 GiB
    card = _card(tmp_path, 10.5)
    outcome, target = _run_033(tmp_path, monkeypatch, card, "0.85")

    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "applied")
    ran = [c for c in outcome["candidates"] if c.get("verdict")]
    assert [(c["rank"], c["params"], c["verdict"]) for c in ran] == [(1, {GMU: 0.9}, "pass")]
    assert ran[0]["why"] == "keeps max_model_len 8192; raises gpu_memory_utilization 0.85→0.9 (+0.79 GiB of the GPU)"
    written = read_target_values(target)
    assert (written[GMU], written[MAX_MODEL_LEN]) == (Decimal("0.9"), 8192)
