"""Actuators: exact grid arithmetic, safe-direction snapping, config parsing, candidate validation."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healing.errors import ConfigError
from healing.tuning.actuators import (
    DEFAULT_ACTUATORS,
    GMU,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    canonical_param,
    parse_tuning_section,
    validate_fix,
    vllm_defaults,
)

gmu = DEFAULT_ACTUATORS[GMU]
seqs = DEFAULT_ACTUATORS[MAX_NUM_SEQS]
mml = DEFAULT_ACTUATORS[MAX_MODEL_LEN]


def test_grid_values_are_exact_decimals_and_clean_floats() -> None:
    grid = [gmu.lower + k * gmu.step for k in range(7)]
    assert [gmu.python_value(g) for g in grid] == [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    assert json.dumps([gmu.python_value(g) for g in grid]) == "[0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]"
    assert gmu.floor_to_step(0.6) == Decimal("0.60")
    assert gmu.floor_to_step(0.6499999) == Decimal("0.60")
    assert gmu.ceil_to_step(0.6000001) == Decimal("0.65")
    assert gmu.floor_to_step("0.7717") == Decimal("0.75")
    assert gmu.ceil_to_step("0.6942") == Decimal("0.70")
    assert gmu.floor_to_step("0.4858") == Decimal("0.45")  # below the bound: callers escalate
    assert seqs.floor_to_step(128) == 128 and seqs.floor_to_step(7) == 6 and seqs.ceil_to_step(7) == 8
    assert mml.floor_to_step(4915) == 4608 and mml.floor_to_step(3000) == 2560 and mml.ceil_to_step(3000) == 3072
    assert isinstance(seqs.python_value(Decimal(6)), int)


def test_snap_directions_and_single_steps() -> None:
    assert gmu.snap("0.83", "lower") == Decimal("0.80")
    assert gmu.snap("0.83", "raise") == Decimal("0.85")
    assert gmu.step_down("0.9") == Decimal("0.85")
    assert gmu.step_down("0.92") == Decimal("0.90")  # off-grid current (vLLM 0.33 default)
    assert gmu.step_up("0.72") == Decimal("0.75")
    assert gmu.step_up("0.75") == Decimal("0.80")
    assert seqs.step_down(256) == 254  # callers clamp to the bound; the grid itself is unbounded
    assert gmu.in_bounds("0.60") and gmu.in_bounds("0.9") and not gmu.in_bounds("0.92")
    assert gmu.format(Decimal("0.80")) == "0.8" and mml.format(Decimal("4096")) == "4096"


values_st = st.decimals(min_value=Decimal("-2"), max_value=Decimal("20000"), places=4, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(values_st, st.sampled_from([GMU, MAX_NUM_SEQS, MAX_MODEL_LEN]))
def test_floor_and_ceil_properties(value: Decimal, name: str) -> None:
    act = DEFAULT_ACTUATORS[name]
    lo, hi = act.floor_to_step(value), act.ceil_to_step(value)
    for r in (lo, hi):
        assert (r - act.lower) % act.step == 0  # on the grid
    assert lo <= value <= hi  # safe direction: floor never above, ceil never below
    assert value - lo < act.step and hi - value < act.step  # and by less than one step
    if lo == value:
        assert hi == value


def test_canonical_names() -> None:
    assert canonical_param("gpu_memory_utilization") == GMU
    assert canonical_param("gpu-memory-utilization") == GMU
    assert canonical_param("vllm.max_num_seqs") == MAX_NUM_SEQS
    assert canonical_param("max_model_len") == MAX_MODEL_LEN
    with pytest.raises(KeyError):
        canonical_param("vllm.tensor_parallel_size")


def test_vllm_defaults_depend_on_version() -> None:
    assert vllm_defaults(None) == {GMU: Decimal("0.9"), MAX_NUM_SEQS: Decimal(256), MAX_MODEL_LEN: None}
    assert vllm_defaults("0.10.2")[GMU] == Decimal("0.9")
    assert vllm_defaults("0.6.3.post1")[GMU] == Decimal("0.9")
    assert vllm_defaults("0.17.1")[GMU] == Decimal("0.9")
    assert vllm_defaults("0.20.0")[GMU] == Decimal("0.92")  # vllm/config/cache.py of 0.20.0 (catalogue)
    assert vllm_defaults("0.33.0")[GMU] == Decimal("0.92")
    assert vllm_defaults("v0.34.1rc1")[GMU] == Decimal("0.92")


def test_parse_tuning_section_defaults_and_overrides() -> None:
    s = parse_tuning_section(None)
    assert s.actuators == DEFAULT_ACTUATORS and s.max_params_per_candidate == 2
    assert s.observer.free_memory_margin == Decimal("0.02") and s.observer.cooldown_seconds == 900
    s = parse_tuning_section({
        "mode": "dev",  # owned by the orchestration: ignored here
        "actuators": {"vllm.gpu_memory_utilization": {"min": 0.5, "max": 0.95, "step": 0.05},
                      "max_num_seqs": {"max": 32}},
        "max_params_per_candidate": 1,
        "observer": {"free_memory_margin": 0.03, "preemption_count": 5},
    })
    assert s.actuators[GMU].lower == Decimal("0.5") and s.actuators[GMU].upper == Decimal("0.95")
    assert s.actuators[MAX_NUM_SEQS].upper == 32 and s.actuators[MAX_NUM_SEQS].lower == 2
    assert s.max_params_per_candidate == 1
    assert s.observer.free_memory_margin == Decimal("0.03") and s.observer.preemption_count == 5


@pytest.mark.parametrize("section, message", [
    ({"actuators": {"vllm.dtype": {"min": 1}}}, "config: tuning.actuators.vllm.dtype is not a known parameter (vllm.gpu_memory_utilization, vllm.max_num_seqs, vllm.max_model_len)"),
    ({"actuators": {"gmu": {"min": 0.9, "max": 0.6}}}, "config: tuning.actuators.gmu.min (0.9) must not exceed max (0.6)"),
    ({"actuators": {"gmu": {"step": 0}}}, "config: tuning.actuators.gmu.step must be > 0, got 0"),
    ({"actuators": {"gmu": {"min": 0.6, "max": 0.9, "step": 0.07}}}, "config: tuning.actuators.gmu: max - min (0.3) must be a multiple of step (0.07)"),
    ({"actuators": {"max_num_seqs": {"step": 1.5}}}, "config: tuning.actuators.max_num_seqs.step must be an integer, got 1.5"),
    ({"actuators": {"gmu": {"max": 1.2}}}, "config: tuning.actuators.gmu.max must be ≤ 1, got 1.2"),
    ({"actuators": {"gmu": {"minimum": 0.5}}}, "config: tuning.actuators.gmu has unknown key(s) minimum (expected min, max, step)"),
    ({"actuators": {"gmu": 0.5}}, "config: tuning.actuators.gmu must be a mapping with min, max, step"),
    ({"actuators": ["gmu"]}, "config: tuning.actuators must be a mapping of parameter name to {min, max, step}"),
    ({"max_params_per_candidate": 4}, "config: tuning.max_params_per_candidate must be between 1 and 3, got 4"),
    ({"observer": {"margin": 0.1}}, "config: tuning.observer has unknown key(s) margin"),
    ({"observer": {"free_memory_margin": "lots"}}, "config: tuning.observer.free_memory_margin must be a number, got 'lots'"),
    ({"observer": {"preemption_count": 0}}, "config: tuning.observer.preemption_count must be between 1 and 100000, got 0"),
    ("tuning", "config: 'tuning' must be a mapping, got str"),
])
def test_parse_tuning_section_errors_are_one_line(section: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tuning_section(section)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_validate_fix() -> None:
    assert validate_fix({"gpu_memory_utilization": "0.80", "vllm.max_num_seqs": 8}) == {GMU: 0.8, MAX_NUM_SEQS: 8}
    with pytest.raises(ConfigError, match="changes 3 parameters, at most 2"):
        validate_fix({GMU: 0.8, MAX_NUM_SEQS: 8, MAX_MODEL_LEN: 4096})
    with pytest.raises(ConfigError, match=r"vllm.gpu_memory_utilization=0.55 is outside \[0.6, 0.9\]"):
        validate_fix({GMU: 0.55})
    with pytest.raises(ConfigError, match="not on the step grid"):
        validate_fix({MAX_MODEL_LEN: 4000})
    with pytest.raises(ConfigError, match="unknown parameter 'vllm.dtype'"):
        validate_fix({"vllm.dtype": 1})
