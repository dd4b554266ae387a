"""Pre-flight counts length as well as memory: one max_model_len request must fit the candidate's KV budget.

Exact boundaries on the simulator's cards, the printed-size route, production sharing the GPU, the
config keys, and a property: pre-flight says "fits" exactly when the simulator's own memory plan
(healing.tuning.simulator.plan_memory) has no startup failure pre-flight is meant to foresee.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from healing.errors import ConfigError
from healing.tuning import simulator
from healing.tuning.actuators import GMU, MAX_MODEL_LEN
from healing.tuning.preflight import (
    GpuMemory,
    KvModel,
    Preflight,
    kv_model,
    preflight_for,
    share_with_production,
)
from healing.tuning.runner_config import parse_gpu_profile, parse_runner_settings
from healing.tuning.simulator import PROFILES, SimConfig, plan_memory

D = Decimal


def _preflight(profile: str | dict, current: dict, values: dict | None = None, **preflight: object) -> Preflight:
    """Pre-flight on a simulator card as a vLLM 0.10.2 log reports it (graphs outside the budget, floored request)."""
    runner = parse_runner_settings({"gpu_profile": profile, "preflight": {"gpu_source": "profile", **preflight}})
    pinned = {"_version": "0.10.2"} if isinstance(profile, str) else {}
    return preflight_for(runner, {**pinned, **(values or {})}, current)


# --------------------------------------------------------------------------- length, from the profile

def test_one_request_of_max_model_len_must_fit_the_budget_exactly() -> None:
    # tight at gmu 0.9: 14.175 − 11.90 − 1.60 = 0.675 GiB = 345 blocks of 16 × 128 KiB = 5,520 tokens
    pre = _preflight("tight", {GMU: D("0.9")})
    assert pre.capacity_tokens(D("0.9")) == 5520
    ok = pre.check({MAX_MODEL_LEN: 5520})
    assert ok.ok and ok.reason == ("fits: 14.17 of 15.50 GiB free, KV cache budget 0.68 GiB (5,520 tokens ≥ max_model_len 5520) "
                                   "(profile tight)")
    short = pre.check({MAX_MODEL_LEN: 5521})  # 346 blocks needed: vLLM rounds a request up to whole blocks
    assert not short.ok and short.reason == (
        "max_model_len 5521 needs 0.68 GiB of KV cache (5,536 tokens × 128 KiB/token), gpu_memory_utilization 0.9 leaves "
        "0.68 GiB (14.17 GiB − model weights 11.90 GiB − activation/overhead 1.60 GiB): 1 token short (profile tight)")
    bug = pre.check({MAX_MODEL_LEN: 8192})  # what main passed as "fits … KV budget 0.68 GiB"
    assert not bug.ok and bug.reason.startswith("max_model_len 8192 needs 1.00 GiB of KV cache (8,192 tokens × 128 KiB/token), "
                                                "gpu_memory_utilization 0.9 leaves 0.68 GiB")
    assert bug.reason.endswith(": 2,672 tokens short (profile tight)")
    over = pre.check({MAX_MODEL_LEN: 32769})
    assert (over.ok, over.reason) == (False, "max_model_len 32769 exceeds the model's own limit of 32,768 tokens (max_position_embeddings)")


def test_memory_boundary_and_graphs_outside_the_budget_of_an_old_vllm() -> None:
    seed = _preflight("seed", {})
    assert not seed.check({GMU: 0.51}).ok
    assert seed.check({GMU: 0.51}).reason == ("gpu_memory_utilization 0.51 asks for 6.12 GiB of the 12.00 GiB GPU, but resident "
                                              "services hold 5.93 GiB and leave 6.07 GiB: 49 MiB short (profile seed)")
    assert seed.kv.graph_in_budget is False
    # vLLM 0.10 captures CUDA graphs outside the budget: 0.5 fits the free memory, not the graphs next to it
    assert seed.check({GMU: 0.5}).reason == ("gpu_memory_utilization 0.5 takes 6.00 of 6.07 GiB free and leaves 0.07 GiB, less "
                                             "than the 0.43 GiB CUDA graphs need outside the budget (profile seed)")


def test_vllm_033_counts_graphs_inside_the_budget_ceils_the_request_and_keeps_a_null_block() -> None:
    pre = _preflight("tight", {GMU: D("0.9")}, {"_version": "0.33.0"})
    # ceil(15.75 GiB × 0.9) − 11.90 − 1.60 − graphs 0.50 = 0.175 GiB = 89 blocks, one of them the null block
    assert (pre.kv.graph_in_budget, pre.kv.request_ceiled, pre.kv.null_block) == (True, True, True)
    assert pre.capacity_tokens(D("0.9")) == 1408
    assert pre.check({MAX_MODEL_LEN: 1408}).ok
    assert pre.check({MAX_MODEL_LEN: 1409}).reason == (
        "max_model_len 1409 needs 0.17 GiB of KV cache (1,424 tokens × 128 KiB/token), gpu_memory_utilization 0.9 leaves 0.17 GiB "
        "(14.18 GiB − model weights 11.90 GiB − activation/overhead 1.60 GiB − CUDA graphs 0.50 GiB − one null block of 2.00 MiB): "
        "1 token short (profile tight)")
    # 0.20 has the graphs inside and the ceiled request, but no null block
    assert _preflight("tight", {GMU: D("0.9")}, {"_version": "0.20.0"}).capacity_tokens(D("0.9")) == 1424


def test_graphs_inside_the_budget_and_a_configured_profile() -> None:
    profile = {"total_gib": 16, "resident_gib": 0, "weights_gib": 12, "overhead_gib": 1.5, "graph_gib": 0.5,
               "kv_bytes_per_token": 131072, "model_max_len": 16384}
    pre = _preflight(profile, {GMU: D("0.9"), MAX_MODEL_LEN: D(4096)})
    # 14.4 − 12 − 1.5 − 0.5 = 0.4 GiB = 204 blocks = 3,264 tokens
    assert pre.capacity_tokens(D("0.9")) == 3264
    r = pre.check({})
    assert r == r.__class__(False, (
        "max_model_len 4096 needs 0.50 GiB of KV cache (4,096 tokens × 128 KiB/token), gpu_memory_utilization 0.9 leaves 0.40 GiB "
        "(14.40 GiB − model weights 12.00 GiB − activation/overhead 1.50 GiB − CUDA graphs 0.50 GiB): 832 tokens short (profile config)"))
    none = pre.check({GMU: 0.85})
    assert (none.ok, none.reason) == (False, (
        "gpu_memory_utilization 0.85 leaves no KV cache: 13.60 GiB − model weights 12.00 GiB − activation/overhead 1.50 GiB "
        "− CUDA graphs 0.50 GiB = -0.40 GiB (profile config)"))
    assert pre.check({MAX_MODEL_LEN: 3264}).ok and not pre.check({MAX_MODEL_LEN: 3265}).ok


# --------------------------------------------------------------------------- length, from the printed size

def test_the_printed_kv_size_is_scaled_to_the_candidates_gmu() -> None:
    # "one request of 8192 needs 1.00 GiB, 0.79 GiB available" at gmu 0.85 on a 15.75 GiB card; no bytes per token
    # configured: they come from the message (1.00 GiB for 8,192 tokens = 128 KiB)
    values = {"max_model_len": 8192, "needed_gib": 1.0, "available_gib": 0.79, "gpu_memory_utilization": 0.85}
    current = {GMU: D("0.85"), MAX_MODEL_LEN: D(8192)}
    kv = kv_model(values, current, None)
    assert (kv.bytes_per_token, kv.printed_kv_gib, kv.printed_gmu) == (131072, D("0.79"), D("0.85"))
    pre = Preflight(GpuMemory(D("15.75"), D("0.25"), None, None, "nvml"), current, kv)
    same = pre.check({})
    assert same.reason == ("max_model_len 8192 needs 1.00 GiB of KV cache (8,192 tokens × 128 KiB/token ≈ from the printed 1.00 GiB "
                           "for 8,192 tokens), gpu_memory_utilization "
                           "0.85 leaves 0.78 GiB (printed KV cache 0.79 GiB at gpu_memory_utilization 0.85 less 0.005 GiB of print "
                           "rounding): 1,776 tokens short (nvml)")
    raised = pre.check({GMU: 0.9})
    assert raised.ok and raised.reason == ("fits: 14.17 of 15.50 GiB free, KV cache budget 1.57 GiB (12,880 tokens ≥ "
                                           "max_model_len 8192) (nvml)")
    # kv_cache_no_memory: minus the deficit is the budget; a multimodal reservation's numbers are not
    assert kv_model({"deficit_gib": 0.9, "gpu_memory_utilization": 0.8}, {}, None).printed_kv_gib == D("-0.9")
    assert kv_model({"deficit_gib": 0.1, "reserved_gib": 2.0, "available_gib": 1.9}, {GMU: D("0.8")}, None).printed_kv_gib is None
    # V0: "max_model_len 8192 is larger than the maximum number of tokens that can be stored in KV cache (2608)"
    v0 = kv_model({"max_model_len": 8192, "kv_cache_tokens": 2608}, {GMU: D("0.9")}, parse_gpu_profile("tight"))
    assert (v0.printed_kv_gib, v0.printed_gmu) == (D("0.318359375"), D("0.9"))


# --------------------------------------------------------------------------- canary beside production

def test_production_on_the_same_gpu_is_resident_for_the_canary() -> None:
    beside = _preflight("default", {GMU: D("0.5"), MAX_MODEL_LEN: D(4096)}, canary_shares_gpu=True)
    note = "; production holds 11.02 GiB on this GPU (gpu_memory_utilization 0.5 × 22.05 GiB); the canary must fit beside it"
    small = beside.check({GMU: 0.4})
    assert small.ok and small.reason.endswith("(profile default)" + note)
    same = beside.check({})
    assert same == same.__class__(False, (
        "gpu_memory_utilization 0.5 asks for 11.02 GiB of the 22.05 GiB GPU, but resident services hold 11.32 GiB and leave "
        "10.73 GiB: 307 MiB short (profile default)" + note))
    assert _preflight("default", {GMU: D("0.5")}).check({}).ok  # on its own GPU the same config fits
    live = GpuMemory(D("24"), D("19"), None, None, "nvidia-smi")
    gpu, text = share_with_production(live, {GMU: D("0.75")})
    assert gpu is live and text == ("; production's memory is part of the 19.00 GiB nvidia-smi reports as used: "
                                    "the canary must fit beside it")
    assert share_with_production(GpuMemory(D("24"), D("1"), None, None, "message"), {})[1].startswith(
        "; the canary shares production's GPU, but production's gpu_memory_utilization is unknown")


# --------------------------------------------------------------------------- config

def test_gpu_profile_keys_and_preflight_keys() -> None:
    p = parse_gpu_profile({"total_gib": 24, "kv_bytes_per_token": 28672, "model_max_len": 32768, "graph_gib": 0.43,
                           "block_size": 32})
    assert (p.kv_bytes_per_token, p.model_max_len, p.graph_gib, p.block_size, p.graph_in_budget) == (28672, 32768, D("0.43"), 32, True)
    tight = parse_gpu_profile("tight")
    assert (tight.kv_bytes_per_token, tight.model_max_len, tight.graph_gib, tight.block_size) == (131072, 32768, D("0.50"), 16)
    assert parse_runner_settings({"preflight": {"canary_shares_gpu": True}}).canary_shares_gpu is True
    with pytest.raises(ConfigError, match=r"tuning.preflight.canary_shares_gpu must be true or false, got 'yes'"):
        parse_runner_settings({"preflight": {"canary_shares_gpu": "yes"}})
    with pytest.raises(ConfigError, match=r"tuning.gpu_profile.kv_bytes_per_token must be"):
        parse_gpu_profile({"total_gib": 24, "kv_bytes_per_token": 0})
    with pytest.raises(ConfigError, match=r"tuning.gpu_profile has unknown key\(s\) kv_per_token"):
        parse_gpu_profile({"total_gib": 24, "kv_per_token": 1})


# --------------------------------------------------------------------------- the simulator agrees

# what pre-flight foresees; "E" (sampler warm-up) is the canary's. "weights" (0.20+: the weights do not fit the free
# memory at load) implies weights > requested ≥ the budget: pre-flight sees no KV cache left
EXPECTED_FAILURES = {"D", "A", "C'", "graph", "J", "weights"}
FORMATS = simulator.VERSIONS  # the vLLM versions the simulator models: log format → version


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), total=st.integers(800, 8000), gmu=st.integers(5, 99), non_torch=st.integers(0, 50),
       activation=st.integers(0, 300), graph=st.integers(0, 100), per_token=st.sampled_from([16384, 28672, 131072, 196608]),
       max_len=st.sampled_from([4096, 65536, 131072]), seqs=st.integers(1, 256), eager=st.booleans(), fmt=st.sampled_from(sorted(FORMATS)))
def test_preflight_fits_iff_the_simulators_plan_starts(tmp_path: Path, data: st.DataObject, total: int, gmu: int, non_torch: int,
                                                        activation: int, graph: int, per_token: int, max_len: int, seqs: int,
                                                        eager: bool, fmt: str) -> None:
    # sizes in 1/100 GiB, drawn around the boundaries: free memory near the request, a KV budget near 0,
    # max_model_len near what that budget holds
    requested = total * gmu // 100
    other = data.draw(st.integers(0, max(total - requested + 60, 0)), label="other")
    kv = data.draw(st.integers(-60, 400), label="kv")
    weights = max(requested - non_torch - activation - kv, 1)
    inside = 0 if eager or fmt == "0.10" else graph  # from 0.20 the graphs come out of the KV budget
    fits_tokens = max(kv - inside, 1) * 1024**3 // 100 // per_token
    mml = data.draw(st.one_of(st.integers(1, 40000), st.integers(max(fits_tokens - 40, 1), fits_tokens + 40)), label="mml")
    cents = Decimal("0.01")
    fields = {"total_gib": total * cents, "other_processes_gib": other * cents, "weights_gib": weights * cents,
              "non_torch_gib": non_torch * cents, "activation_peak_gib": activation * cents,
              "graph_capture_gib": (0 if eager else graph) * cents, "kv_bytes_per_token": per_token, "model_max_len": max_len}
    card = replace(PROFILES["default"], **fields)
    plan = plan_memory(card, SimConfig(gmu * cents, seqs, mml, eager, log_format=fmt))
    event(f"simulator {fmt}: {plan.failure or 'starts'}")
    path = tmp_path / "card.json"
    path.write_text(json.dumps({k: str(v) if isinstance(v, Decimal) else v for k, v in fields.items()}), encoding="utf-8")
    runner = parse_runner_settings({"gpu_profile": str(path), "preflight": {"gpu_source": "profile"}})
    result = preflight_for(runner, {"_version": FORMATS[fmt]}, {}).check({GMU: gmu * cents, MAX_MODEL_LEN: mml})
    assert result.ok == (plan.failure not in EXPECTED_FAILURES), (plan.failure, plan.message, result.reason)


def test_kv_model_without_anything_checks_memory_only() -> None:
    pre = Preflight(GpuMemory(D("24"), D("2"), None, None, "nvml"), {GMU: D("0.9"), MAX_MODEL_LEN: D(131072)}, KvModel())
    assert pre.check({}).reason == "fits: 21.60 of 22.00 GiB free (nvml)"
    assert pre.capacity_tokens(D("0.9")) is None
