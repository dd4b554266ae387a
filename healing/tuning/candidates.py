"""Candidate parameter sets for one intent: the minimal fix first, then small steps in the safe direction.

Pure functions (intent data and running values in, candidates out). The order is the order the canary
tries them in, so the smallest change that works wins:

1. the Observer's ``seed_fix`` (computed from the printed numbers);
2. the Observer's alternatives (e.g. raise gmu instead of cutting max_model_len);
3. a small grid: the primary parameter of the error class stepped further in its safe direction from
   the seed (or from the running value when there is no seed), and the seed combined with one step of
   the class's secondary parameter — never more than ``max_params_per_candidate`` parameters.

Every candidate carries ``uncapped``: per parameter, the value the arithmetic wanted, snapped on the
grid in the safe direction but *not* clamped into the bounds (the seed's 0.55 beside the bounded 0.60).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, Actuator, TuningSettings, to_decimal
from healing.tuning.observer import (
    GRAPH_OOM,
    KV_MAX_LEN,
    KV_NO_MEMORY,
    KV_ONE_REQUEST,
    PREEMPTION,
    SAMPLER_OOM,
    STARTUP_FREE_MEMORY,
    TORCH_OOM,
)

# class → ((primary param, direction), (secondary param, direction) | None), from VLLM_MESSAGES.md §4
DIRECTIONS: dict[str, tuple[tuple[str, str], tuple[str, str] | None]] = {
    STARTUP_FREE_MEMORY: ((GMU, "lower"), None),  # max_num_seqs frees nothing for co-resident services
    KV_NO_MEMORY: ((GMU, "raise"), None),
    KV_MAX_LEN: ((MAX_MODEL_LEN, "lower"), (GMU, "raise")),
    KV_ONE_REQUEST: ((MAX_MODEL_LEN, "lower"), (GMU, "raise")),
    SAMPLER_OOM: ((MAX_NUM_SEQS, "lower"), (GMU, "lower")),
    TORCH_OOM: ((GMU, "lower"), (MAX_NUM_SEQS, "lower")),
    GRAPH_OOM: ((GMU, "lower"), (MAX_NUM_SEQS, "lower")),
    PREEMPTION: ((GMU, "raise"), (MAX_NUM_SEQS, "lower")),
}


@dataclass(frozen=True)
class Candidate:
    """One parameter set to try: bounded values, what the arithmetic wanted, and where it came from."""

    params: dict[str, int | float]
    uncapped: dict[str, int | float]
    origin: str  # "seed_fix", "alternative", "grid"

    def key(self) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(self.params.items()))


def direction_for(error_class: str) -> tuple[tuple[str, str], tuple[str, str] | None] | None:
    """The (primary, secondary) parameter directions of an error class, or None when no actuator applies."""
    return DIRECTIONS.get(error_class)


def _step(act: Actuator, value: Decimal, direction: str) -> Decimal:
    return act.step_down(value) if direction == "lower" else act.step_up(value)


def _clamp(act: Actuator, value: Decimal) -> Decimal:
    return min(max(value, act.lower), act.upper)


def uncapped_target(error_class: str, values: Mapping[str, Any], param: str, bounded: Decimal,
                    current: Mapping[str, Decimal], settings: TuningSettings) -> Decimal:
    """What the arithmetic behind a seed fix wanted for ``param``, snapped but not clamped."""
    act = settings.actuators[param]
    plan = DIRECTIONS.get(error_class)
    direction = next((d for p, d in (plan or ()) if p == param), None) if plan else None
    if direction is None:
        direction = "lower" if param in current and bounded < current[param] else "raise"
    if param == GMU and values.get("target_gpu_memory_utilization") is not None:
        return act.snap(to_decimal(values["target_gpu_memory_utilization"]), direction)  # type: ignore[arg-type]
    if param == MAX_MODEL_LEN:
        for name in ("estimated_max_model_len", "computed_max_model_len", "kv_cache_tokens", "derived_max_model_len"):
            if values.get(name) is not None:
                return act.floor_to_step(to_decimal(values[name]))
    if param == MAX_NUM_SEQS and error_class == SAMPLER_OOM and values.get("num_dummy_requests") is not None:
        return act.floor_to_step(to_decimal(values["num_dummy_requests"]) / 2)
    running = current.get(param)
    if running is not None and not act.in_bounds(running):
        # a one-step fix from a running value outside the bounds: the step the arithmetic took
        return _step(act, running, direction)
    return bounded


def generate_candidates(intent: Mapping[str, Any], current: Mapping[str, Decimal], settings: TuningSettings,
                        max_candidates: int = 3) -> list[Candidate]:
    """Candidates for one intent (see the module docstring); [] when the class has no actuator and no seed."""
    error_class = str(intent.get("error_class") or intent.get("class") or "")
    values = dict(intent.get("values") or {})
    seed = intent.get("seed_fix") or None
    alternatives = values.get("_alternatives") or []
    limit = settings.max_params_per_candidate
    out: list[Candidate] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()

    def add(params: Mapping[str, Decimal], uncapped: Mapping[str, Decimal], origin: str) -> None:
        if not params or len(params) > limit or len(out) >= max_candidates:
            return
        acts = {p: settings.actuators[p] for p in params}
        if any(not acts[p].in_bounds(v) for p, v in params.items()):
            return
        if all(current.get(p) == v for p, v in params.items()):
            return  # changes nothing
        cand = Candidate({p: acts[p].python_value(v) for p, v in params.items()},
                         {p: acts[p].python_value(uncapped.get(p, v)) for p, v in params.items()}, origin)
        if cand.key() not in seen:
            seen.add(cand.key())
            out.append(cand)

    seed_dec: dict[str, Decimal] = {}
    if seed:
        seed_dec = {p: to_decimal(v) for p, v in seed.items() if p in settings.actuators}
        add(seed_dec, {p: uncapped_target(error_class, values, p, v, current, settings) for p, v in seed_dec.items()}, "seed_fix")
    for alt in alternatives:
        alt_dec = {p: to_decimal(v) for p, v in dict(alt).items() if p in settings.actuators}
        add(alt_dec, {p: uncapped_target(error_class, values, p, v, current, settings) for p, v in alt_dec.items()}, "alternative")

    plan = DIRECTIONS.get(error_class)
    if plan is None:
        return out
    (primary, p_dir), secondary = plan
    act = settings.actuators[primary]
    start = seed_dec.get(primary, current.get(primary))
    if start is None:
        return out
    # up to max_candidates further steps of the primary parameter (bounded; stop at the bound)
    value = start
    steps: list[tuple[Decimal, Decimal]] = []
    for _ in range(max_candidates):
        raw = _step(act, value, p_dir)
        bounded = _clamp(act, raw)
        if bounded == value or (p_dir == "lower" and bounded > value) or (p_dir == "raise" and bounded < value):
            break
        steps.append((bounded, raw))
        value = bounded
    sec_step: tuple[str, Decimal, Decimal] | None = None
    if secondary is not None and limit >= 2:
        s_param, s_dir = secondary
        s_act = settings.actuators[s_param]
        s_cur = current.get(s_param)
        if s_cur is not None:
            raw = _step(s_act, s_cur, s_dir)
            bounded = _clamp(s_act, raw)
            if bounded != s_cur and ((s_dir == "lower") == (bounded < s_cur)):
                sec_step = (s_param, bounded, raw)
    # interleave: one more primary step, then the seed combined with the secondary step, then further steps
    if steps:
        b, r = steps[0]
        add({primary: b}, {primary: r}, "grid")
    if sec_step is not None:
        base = dict(seed_dec) if seed_dec else ({primary: steps[0][0]} if steps else {})
        if base and sec_step[0] not in base:
            unc = {p: uncapped_target(error_class, values, p, v, current, settings) if p in seed_dec else v for p, v in base.items()}
            add({**base, sec_step[0]: sec_step[1]}, {**unc, sec_step[0]: sec_step[2]}, "grid")
    for b, r in steps[1:]:
        add({primary: b}, {primary: r}, "grid")
    return out
