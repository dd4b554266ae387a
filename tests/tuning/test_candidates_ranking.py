"""Candidates ranked by what they cost the user, planned with pre-flight's arithmetic; every class has a direction.

The intents carry the values the Observer reads from the simulator's log for each scenario (the
catalogue's samples and tests/tuning/test_candidates_e2e.py show the same numbers come out of real logs).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, default_settings
from healing.tuning.candidates import (
    DIRECTIONS,
    KV_LENGTH_CLASSES,
    NO_ACTUATOR,
    direction_for,
    generate_candidates,
)
from healing.tuning.observer import EVENT_CLASSES
from healing.tuning.preflight import Preflight, preflight_for
from healing.tuning.runner import running_values
from healing.tuning.runner_config import parse_runner_settings

D = Decimal
SETTINGS = default_settings()
CATALOGUE = Path(__file__).resolve().parents[2] / "healing" / "tuning" / "vllm_catalogue" / "catalogue.yaml"
# a 7B-class model on a 16 GiB card (the simulator's "tight" numbers), weights as given
CARD = {"total_gib": 15.75, "resident_gib": 0.25, "overhead_gib": 1.6, "kv_bytes_per_token": 131072, "model_max_len": 32768}


def _preflight(current: dict, values: dict, weights: float = 11.9, **preflight: object) -> Preflight:
    runner = parse_runner_settings({"gpu_profile": {**CARD, "weights_gib": weights},
                                    "preflight": {"gpu_source": "profile", **preflight}})
    return preflight_for(runner, values, current)


def _rows(cands: list) -> list[tuple[int, dict, str]]:
    return [(c.rank, c.params, c.origin) for c in cands]


def test_kv_smaller_than_max_model_len_with_gmu_headroom_raises_gmu_and_keeps_the_length() -> None:
    # vLLM at gmu 0.85 on a card with 11 GiB of weights: "one request of 8192 needs 1.00 GiB, 0.79 GiB available,
    # estimated maximum 6448"; the Observer's seed cuts to 6144 and offers gmu 0.9 as the alternative
    intent = {"error_class": "kv_cache_one_request_does_not_fit", "seed_fix": {MAX_MODEL_LEN: 6144},
              "values": {"max_model_len": 8192, "needed_gib": 1.0, "available_gib": 0.79, "target_gpu_memory_utilization": 0.8637,
                         "estimated_max_model_len": 6448, "_alternatives": [{GMU: 0.9}]}}
    current = {GMU: D("0.85"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    pre = _preflight(current, intent["values"], weights=11.0)
    cands = generate_candidates(intent, current, SETTINGS, 3, pre)
    assert _rows(cands) == [(1, {GMU: 0.9}, "alternative"), (2, {MAX_MODEL_LEN: 6144}, "seed_fix"), (3, {MAX_MODEL_LEN: 5632}, "grid")]
    assert cands[0].why == "keeps max_model_len 8192; raises gpu_memory_utilization 0.85→0.9 (+0.79 GiB of the GPU)"
    assert cands[1].why == "cuts max_model_len 8192→6144 alone: gives up 2,048 tokens of context (25%)"
    assert cands[0].stored_origin() == ("alternative (rank 1): keeps max_model_len 8192; raises gpu_memory_utilization "
                                        "0.85→0.9 (+0.79 GiB of the GPU)")
    assert pre.check(cands[0].params).reason == ("fits: 14.17 of 15.50 GiB free, KV cache budget 1.57 GiB (12,880 tokens ≥ "
                                                 "max_model_len 8192) (profile config)")
    # without any GPU picture the ranking is by cost alone: still the length kept first
    blind = generate_candidates(intent, current, SETTINGS, 3)
    assert [c.params for c in blind] == [{GMU: 0.9}, {MAX_MODEL_LEN: 6144}, {MAX_MODEL_LEN: 5632}]


def test_the_smallest_gmu_that_holds_the_length_is_planned_when_the_observer_offers_none() -> None:
    # kv_cache_no_memory at gmu 0.7 (deficit 0.1 GiB); the Observer's seed 0.75 would start but not hold 8192 tokens
    intent = {"error_class": "kv_cache_no_memory", "seed_fix": {GMU: 0.75},
              "values": {"gpu_memory_utilization": 0.7, "deficit_gib": 0.1, "total_gib": 15.75}}
    current = {GMU: D("0.7"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    pre = _preflight(current, intent["values"], weights=9.4)
    # 0.75: −0.1 − 0.005 + 0.79 = 0.68 GiB < 1 GiB; 0.8: 1.47 GiB ≥ 1 GiB. With room for one candidate only,
    # the Observer's pool holds the seed alone: the plan adds 0.8, which outranks the rejected seed
    [only] = generate_candidates(intent, current, SETTINGS, 1, pre)
    assert (only.params, only.origin, only.rank) == ({GMU: 0.8}, "memory_and_length", 1)
    cands = generate_candidates(intent, current, SETTINGS, 3, pre)
    assert [(c.params, c.origin, pre.check(c.params).ok) for c in cands] == [
        ({GMU: 0.8}, "grid", True), ({GMU: 0.85}, "grid", True), ({GMU: 0.75}, "seed_fix", False)]
    assert pre.check({GMU: 0.75}).reason.endswith(": 2,608 tokens short (profile config)")


def test_without_gmu_headroom_the_two_parameter_candidate_comes_first() -> None:
    # the bug on main: gmu 0.8, max_model_len 8192 → "No available memory for the cache blocks" (−0.90 GiB);
    # the seed gmu 0.9 starts the engine but leaves 0.675 GiB for a 1 GiB request
    intent = {"error_class": "kv_cache_no_memory", "seed_fix": {GMU: 0.9},
              "values": {"gpu_memory_utilization": 0.8, "deficit_gib": 0.9, "total_gib": 15.75, "target_gpu_memory_utilization": 0.8575}}
    current = {GMU: D("0.8"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    pre = _preflight(current, intent["values"])
    cands = generate_candidates(intent, current, SETTINGS, 3, pre)
    assert _rows(cands) == [(1, {GMU: 0.9, MAX_MODEL_LEN: 5120}, "memory_and_length"), (2, {GMU: 0.9}, "seed_fix")]
    assert cands[0].why == ("raises gpu_memory_utilization 0.8→0.9 (+1.58 GiB of the GPU); cuts max_model_len 8192→5120: "
                            "gives up 3,072 tokens of context (38%)")
    assert pre.check(cands[0].params).reason == ("fits: 14.17 of 15.50 GiB free, KV cache budget 0.67 GiB (5,488 tokens ≥ "
                                                 "max_model_len 5120) (profile config)")
    assert pre.check(cands[1].params).reason == (
        "max_model_len 8192 needs 1.00 GiB of KV cache (8,192 tokens × 128 KiB/token), gpu_memory_utilization 0.9 leaves 0.67 GiB "
        "(printed KV cache -0.90 GiB at gpu_memory_utilization 0.8 less 0.005 GiB of print rounding + 1.58 GiB): "
        "2,704 tokens short (profile config)")
    # a running length above the max_model_len bound (8192) is never cut into it by the plan
    long = {**current, MAX_MODEL_LEN: D(16384)}
    assert [c.params for c in generate_candidates(intent, long, SETTINGS, 3, _preflight(long, intent["values"]))] == [{GMU: 0.9}]
    # one parameter per candidate allowed: no two-parameter plan, the rejected seed alone
    single = generate_candidates(intent, current, SETTINGS.__class__(SETTINGS.actuators, max_params_per_candidate=1), 3, pre)
    assert [c.params for c in single] == [{GMU: 0.9}]


def test_at_the_gmu_bound_only_the_length_can_give() -> None:
    # gmu 0.9 already: "one request of 8192 needs 1.00 GiB, 0.68 GiB available, estimated 5520"
    intent = {"error_class": "kv_cache_one_request_does_not_fit", "seed_fix": {MAX_MODEL_LEN: 5120},
              "values": {"max_model_len": 8192, "needed_gib": 1.0, "available_gib": 0.68, "estimated_max_model_len": 5520,
                         "target_gpu_memory_utilization": 0.9206}}
    current = {GMU: D("0.9"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    cands = generate_candidates(intent, current, SETTINGS, 3, _preflight(current, intent["values"]))
    assert [(c.params, c.why) for c in cands] == [
        ({MAX_MODEL_LEN: 5120}, "cuts max_model_len 8192→5120 alone: gives up 3,072 tokens of context (38%)"),
        ({MAX_MODEL_LEN: 4608}, "cuts max_model_len 8192→4608 alone: gives up 3,584 tokens of context (44%)"),
        ({MAX_MODEL_LEN: 4096}, "cuts max_model_len 8192→4096 alone: gives up 4,096 tokens of context (50%)")]


def test_a_model_limit_is_not_a_memory_question() -> None:
    intent = {"error_class": "kv_cache_max_len_too_large", "seed_fix": {MAX_MODEL_LEN: 4096},
              "values": {"max_model_len": 8192, "derived_max_model_len": 4096}}
    current = {GMU: D("0.8"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    runner = parse_runner_settings({"gpu_profile": {**CARD, "weights_gib": 9.0, "model_max_len": 4096},
                                    "preflight": {"gpu_source": "profile"}})
    pre = preflight_for(runner, intent["values"], current)
    cands = generate_candidates(intent, current, SETTINGS, 3, pre)
    assert [c.params for c in cands] == [{MAX_MODEL_LEN: 4096}, {MAX_MODEL_LEN: 4096, GMU: 0.85}, {MAX_MODEL_LEN: 3584}]
    assert pre.check({GMU: 0.85}).reason == "max_model_len 8192 exceeds the model's own limit of 4,096 tokens (max_position_embeddings)"


def test_sampler_oom_lowers_max_num_seqs_first() -> None:
    intent = {"error_class": "sampler_warmup_oom", "seed_fix": {MAX_NUM_SEQS: 16}, "values": {"num_dummy_requests": 256}}
    current = {GMU: D("0.9"), MAX_NUM_SEQS: D(256), MAX_MODEL_LEN: D(4096)}
    cands = generate_candidates(intent, current, SETTINGS, 3, _preflight(current, intent["values"], weights=9.0))
    assert [(c.rank, c.params, c.why) for c in cands] == [
        (1, {MAX_NUM_SEQS: 16}, "lowers max_num_seqs 256→16: 240 fewer concurrent sequences"),
        (2, {MAX_NUM_SEQS: 14}, "lowers max_num_seqs 256→14: 242 fewer concurrent sequences"),
        (3, {MAX_NUM_SEQS: 16, GMU: 0.85}, "lowers gpu_memory_utilization 0.9→0.85 (−0.79 GiB of KV cache); "
                                           "lowers max_num_seqs 256→16: 240 fewer concurrent sequences")]


def test_the_seeds_scenario_rejects_everything_with_the_1155_mib_arithmetic() -> None:
    intent = {"error_class": "kv_cache_no_memory", "seed_fix": {GMU: 0.6},
              "values": {"gpu_memory_utilization": 0.45, "deficit_gib": 1.13, "total_gib": 12.0, "target_gpu_memory_utilization": 0.5446}}
    current = {GMU: D("0.45"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(4096)}
    runner = parse_runner_settings({"gpu_profile": {"total_gib": 12.0, "resident_gib": 5.928, "weights_gib": 5.2279,
                                                    "overhead_gib": 1.3, "kv_bytes_per_token": 28672},
                                    "preflight": {"gpu_source": "profile"}})
    pre = preflight_for(runner, intent["values"], current)
    cands = generate_candidates(intent, current, SETTINGS, 3, pre)
    assert [c.params for c in cands] == [{GMU: 0.6}, {GMU: 0.65}, {GMU: 0.7}]
    assert [pre.check(c.params).ok for c in cands] == [False, False, False]
    assert pre.check(cands[0].params).reason == ("gpu_memory_utilization 0.6 asks for 7.20 GiB of the 12.00 GiB GPU, but resident "
                                                 "services hold 5.93 GiB and leave 6.07 GiB: 1155 MiB short (profile config)")


def test_beside_production_the_plan_respects_what_production_holds() -> None:
    # the headroom card, but the canary shares production's GPU: nothing of 0.85+ fits beside 13.39 GiB
    intent = {"error_class": "kv_cache_one_request_does_not_fit", "seed_fix": {MAX_MODEL_LEN: 6144},
              "values": {"max_model_len": 8192, "needed_gib": 1.0, "available_gib": 0.79, "_alternatives": [{GMU: 0.9}]}}
    current = {GMU: D("0.85"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    pre = _preflight(current, intent["values"], weights=11.0, canary_shares_gpu=True)
    cands = generate_candidates(intent, current, SETTINGS, 3, pre)
    assert [pre.check(c.params).ok for c in cands] == [False, False, False]
    assert pre.check(cands[0].params).reason.endswith(
        "; production holds 13.39 GiB on this GPU (gpu_memory_utilization 0.85 × 15.75 GiB); the canary must fit beside it")


# --------------------------------------------------------------------------- every class has an answer

def _catalogue_classes() -> set[str]:
    data = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))
    found = {e["class"] for e in data["entries"]}
    found |= {s["class"] for e in data["entries"] for s in e.get("samples", []) if "class" in s}
    return found


def test_every_catalogue_class_has_a_direction_or_an_explicit_no_actuator() -> None:
    classes = _catalogue_classes()
    assert len(classes) == 21 and classes == set(EVENT_CLASSES)
    assert set(DIRECTIONS) | set(NO_ACTUATOR) == classes
    assert set(DIRECTIONS) & set(NO_ACTUATOR) == set()
    assert sorted(NO_ACTUATOR) == ["memory_profiling_error", "model_weights_oom"]
    assert all(direction_for(c) is None for c in NO_ACTUATOR)
    assert KV_LENGTH_CLASSES <= set(DIRECTIONS)
    for cls, ((primary, p_dir), secondary) in DIRECTIONS.items():
        assert primary in SETTINGS.actuators and p_dir in ("lower", "raise"), cls
        assert secondary is None or (secondary[0] in SETTINGS.actuators and secondary[0] != primary), cls


@pytest.mark.parametrize("error_class, current, first", [
    ("external_weights_exceed_budget", {GMU: D("0.6")}, {GMU: 0.65}),
    ("mamba_cache_blocks_below_max_num_seqs", {GMU: D("0.8"), MAX_NUM_SEQS: D(16)}, {MAX_NUM_SEQS: 14}),
    ("batched_tokens_below_max_model_len", {MAX_MODEL_LEN: D(4096)}, {MAX_MODEL_LEN: 3584}),
    ("batched_tokens_below_max_num_seqs", {MAX_NUM_SEQS: D(16)}, {MAX_NUM_SEQS: 14}),
    ("auto_fit_max_model_len_failed", {GMU: D("0.7")}, {GMU: 0.75}),
    ("cpu_kv_cache_no_memory", {GMU: D("0.7")}, {GMU: 0.75}),
    ("nccl_oom", {GMU: D("0.7"), MAX_NUM_SEQS: D(16)}, {GMU: 0.65}),
])
def test_the_new_classes_step_in_their_direction_without_a_seed(error_class: str, current: dict, first: dict) -> None:
    cands = generate_candidates({"error_class": error_class, "values": {}}, current, SETTINGS, 3)
    assert cands[0].params == first
    assert generate_candidates({"error_class": "model_weights_oom", "values": {}}, current, SETTINGS, 3) == []


# --------------------------------------------------------------------------- max_model_len auto

def test_a_length_vllm_resolved_is_named_as_such() -> None:
    intent = {"error_class": "kv_cache_one_request_does_not_fit", "seed_fix": {MAX_MODEL_LEN: 6144},
              "values": {"max_model_len": 8192, "needed_gib": 1.0, "available_gib": 0.79, "_alternatives": [{GMU: 0.9}]}}
    current = {GMU: D("0.85"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    first, second, _third = generate_candidates(intent, current, SETTINGS, 3, _preflight(current, intent["values"], weights=11.0),
                                                length_resolved=True)
    note = "the running max_model_len 8192 is the length vLLM resolved (the target config sets none, or auto)"
    assert first.why == f"keeps max_model_len 8192; raises gpu_memory_utilization 0.85→0.9 (+0.79 GiB of the GPU); {note}"
    assert second.why == f"cuts max_model_len 8192→6144 alone: gives up 2,048 tokens of context (25%); {note}"
    sampler = generate_candidates({"error_class": "sampler_warmup_oom", "seed_fix": {MAX_NUM_SEQS: 16}, "values": {}},
                                  {**current, MAX_NUM_SEQS: D(256)}, SETTINGS, 1, length_resolved=True)
    assert sampler[0].why == "lowers max_num_seqs 256→16: 240 fewer concurrent sequences"  # the length is not its business


def test_a_running_max_model_len_of_auto_is_what_vllm_resolved(tmp_path: Path) -> None:
    target = tmp_path / "vllm.yaml"
    target.write_text(yaml.safe_dump({"vllm": {"gpu_memory_utilization": 0.9, "max_model_len": -1}}), encoding="utf-8")
    runner = parse_runner_settings({"target_config": str(target)})
    assert running_values(runner, {"max_model_len": 32768})[MAX_MODEL_LEN] == D(32768)
    assert MAX_MODEL_LEN not in running_values(runner, {})  # unknown, never -1: no candidate is computed from "auto"
