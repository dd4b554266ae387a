"""Candidate parameter sets for one intent, ranked by what they cost the user.

Pure functions (intent data, running values and the run's pre-flight in, candidates out). The pool:

1. the Observer's ``seed_fix`` (computed from the printed numbers);
2. the Observer's alternatives (e.g. raise gmu instead of cutting max_model_len);
3. a small grid: the primary parameter of the error class stepped further in its safe direction from
   the seed (or from the running value when there is no seed), and the seed combined with one step of
   the class's secondary parameter — never more than ``max_params_per_candidate`` parameters;
4. for the classes where the KV cache must hold one ``max_model_len`` request (``KV_LENGTH_CLASSES``),
   the pre-flight arithmetic's own answers: the smallest gpu_memory_utilization that holds the running
   max_model_len; when no single parameter can, gmu raised as far as free memory allows together with
   max_model_len cut to what then fits (two parameters); max_model_len cut alone at the running gmu.
   ``--max-model-len auto``/``-1`` is never a candidate: vLLM would give up context without saying so
   (the actuator's lower bound keeps every value explicit).

The pool is ranked — candidates pre-flight accepts first, then by cost: context given up (tokens of
max_model_len), parameters changed (one is easier to review and roll back than two), memory taken from
other tenants (gmu raised), concurrency given up (max_num_seqs lowered), KV cache given back (gmu
lowered), the pool's order — and cut to ``max_candidates``.
Each candidate carries its ``rank`` and a one-line ``why``; the runner stores both in the candidate's
``origin`` text ("grid (rank 1): keeps max_model_len 8192; raises gpu_memory_utilization 0.85→0.9 …"),
which lives in the JSON ``score_breakdown`` column and the audit event (no schema change).

Every candidate carries ``uncapped``: per parameter, the value the arithmetic wanted, snapped on the
grid in the safe direction but *not* clamped into the bounds (the seed's 0.55 beside the bounded 0.60).

Does max_num_seqs change the KV budget? In vLLM ≥ 0.21 it does: the profiling run warms the sampler
up with max_num_seqs dummy requests (vllm 0.33 v1/worker/gpu_model_runner.py ``profile_run`` →
``_dummy_sampler_run``), CUDA graphs are captured up to min(2·max_num_seqs, 512) tokens
(config/vllm.py ``_set_cudagraph_sizes``), and both are taken from the budget
(v1/worker/gpu_worker.py: available = requested − non_kv_cache_memory − cudagraph_memory_estimate).
How much depends on the model's vocabulary and graphs, which no log line prints; a max_num_seqs
candidate for a length class therefore only comes from the Observer or the grid, and pre-flight judges
it with the budget it knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, Actuator, TuningSettings, to_decimal
from healing.tuning.observer import (
    AUTO_FIT,
    BATCHED_BELOW_LEN,
    BATCHED_BELOW_SEQS,
    CPU_KV_EXCEEDS,
    CPU_KV_NO_MEMORY,
    CPU_STARTUP_FREE_MEMORY,
    EXTERNAL_WEIGHTS,
    GRAPH_OOM,
    HIP_OOM,
    KV_MAX_LEN,
    KV_NO_MEMORY,
    KV_ONE_REQUEST,
    MAMBA_BLOCKS,
    NCCL_OOM,
    PREEMPTION,
    PROFILING_ERROR,
    SAMPLER_OOM,
    STARTUP_FREE_MEMORY,
    TORCH_OOM,
    WEIGHTS_OOM,
    XPU_OOM,
)

if TYPE_CHECKING:
    from healing.tuning.preflight import Preflight

# class → ((primary param, direction), (secondary param, direction) | None): the catalogue's remedy
# (healing/tuning/vllm_catalogue/catalogue.yaml) and the fix vLLM's message names.
DIRECTIONS: dict[str, tuple[tuple[str, str], tuple[str, str] | None]] = {
    STARTUP_FREE_MEMORY: ((GMU, "lower"), None),  # max_num_seqs frees nothing for co-resident services
    KV_NO_MEMORY: ((GMU, "raise"), None),  # the length route is the pre-flight planner's (KV_LENGTH_CLASSES)
    KV_MAX_LEN: ((MAX_MODEL_LEN, "lower"), (GMU, "raise")),
    KV_ONE_REQUEST: ((MAX_MODEL_LEN, "lower"), (GMU, "raise")),
    SAMPLER_OOM: ((MAX_NUM_SEQS, "lower"), (GMU, "lower")),
    TORCH_OOM: ((GMU, "lower"), (MAX_NUM_SEQS, "lower")),
    GRAPH_OOM: ((GMU, "lower"), (MAX_NUM_SEQS, "lower")),
    PREEMPTION: ((GMU, "raise"), (MAX_NUM_SEQS, "lower")),
    # another process's weights fill the budget: "Increase GPU memory utilization" (0.33 v1/worker/utils.py)
    EXTERNAL_WEIGHTS: ((GMU, "raise"), None),
    # one Mamba cache block per decode sequence; vLLM: lower max_num_seqs or give it more memory
    MAMBA_BLOCKS: ((MAX_NUM_SEQS, "lower"), (GMU, "raise")),
    # max_num_batched_tokens is not ours: max_model_len must come down to it (memory does not help)
    BATCHED_BELOW_LEN: ((MAX_MODEL_LEN, "lower"), None),
    BATCHED_BELOW_SEQS: ((MAX_NUM_SEQS, "lower"), None),
    # "Cannot auto-fit max_model_len … Try increasing gpu_memory_utilization"
    AUTO_FIT: ((GMU, "raise"), None),
    # the CPU backend's gmu is a share of the NUMA node's memory
    CPU_STARTUP_FREE_MEMORY: ((GMU, "lower"), None),
    CPU_KV_EXCEEDS: ((GMU, "lower"), None),  # the auto-sized variant; the explicit one escalates (Observer)
    CPU_KV_NO_MEMORY: ((GMU, "raise"), None),
    HIP_OOM: ((GMU, "lower"), (MAX_NUM_SEQS, "lower")),
    XPU_OOM: ((GMU, "lower"), (MAX_NUM_SEQS, "lower")),
    # NCCL buffers live outside the gmu budget: a smaller budget leaves them room
    NCCL_OOM: ((GMU, "lower"), (MAX_NUM_SEQS, "lower")),
}

# classes no parameter of ours can fix, with the reason
NO_ACTUATOR: dict[str, str] = {
    PROFILING_ERROR: "another process changed its GPU memory while vLLM was profiling: isolate the GPU, no setting helps",
    WEIGHTS_OOM: "the model's weights do not fit the GPU: tensor parallelism or quantization are needed, not our parameters",
}

# classes where the KV cache must hold one max_model_len request: memory and length are planned together
KV_LENGTH_CLASSES = frozenset({KV_NO_MEMORY, KV_MAX_LEN, KV_ONE_REQUEST, AUTO_FIT})


@dataclass(frozen=True)
class Candidate:
    """One parameter set to try: bounded values, what the arithmetic wanted, where it came from, its rank and why."""

    params: dict[str, int | float]
    uncapped: dict[str, int | float]
    origin: str  # "seed_fix", "alternative", "grid", "memory_and_length"
    rank: int = 0
    why: str = ""

    def key(self) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(self.params.items()))

    def stored_origin(self) -> str:
        """The text stored as the candidate's origin: "grid (rank 1): keeps max_model_len 8192; …"."""
        return f"{self.origin} (rank {self.rank}): {self.why}" if self.rank else self.origin


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
    # the message names the ceiling: "at most N" Mamba cache blocks, or max_num_batched_tokens
    ceiling = {MAMBA_BLOCKS: "mamba_cache_blocks", BATCHED_BELOW_SEQS: "max_num_batched_tokens"}.get(error_class)
    if param == MAX_NUM_SEQS and ceiling is not None and values.get(ceiling) is not None:
        return act.floor_to_step(to_decimal(values[ceiling]))
    running = current.get(param)
    if running is not None and not act.in_bounds(running):
        # a one-step fix from a running value outside the bounds: the step the arithmetic took
        return _step(act, running, direction)
    return bounded


_Pooled = tuple[dict[str, Decimal], dict[str, Decimal], str]


def _grid_pool(error_class: str, values: Mapping[str, Any], seed_dec: Mapping[str, Decimal], current: Mapping[str, Decimal],
               settings: TuningSettings, max_candidates: int) -> list[_Pooled]:
    """The Observer-independent grid: further steps of the primary parameter, the seed with one secondary step."""
    plan = DIRECTIONS.get(error_class)
    if plan is None:
        return []
    (primary, p_dir), secondary = plan
    act = settings.actuators[primary]
    start = seed_dec.get(primary, current.get(primary))
    if start is None:
        return []
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
    if secondary is not None and settings.max_params_per_candidate >= 2:
        s_param, s_dir = secondary
        s_act = settings.actuators[s_param]
        s_cur = current.get(s_param)
        if s_cur is not None:
            raw = _step(s_act, s_cur, s_dir)
            bounded = _clamp(s_act, raw)
            if bounded != s_cur and ((s_dir == "lower") == (bounded < s_cur)):
                sec_step = (s_param, bounded, raw)
    out: list[_Pooled] = []
    if steps:
        out.append(({primary: steps[0][0]}, {primary: steps[0][1]}, "grid"))
    if sec_step is not None:
        base = dict(seed_dec) if seed_dec else ({primary: steps[0][0]} if steps else {})
        if base and sec_step[0] not in base:
            unc = {p: uncapped_target(error_class, values, p, v, current, settings) if p in seed_dec else v for p, v in base.items()}
            out.append(({**base, sec_step[0]: sec_step[1]}, {**unc, sec_step[0]: sec_step[2]}, "grid"))
    out += [({primary: b}, {primary: r}, "grid") for b, r in steps[1:]]
    return out


def _length_plan(current: Mapping[str, Decimal], settings: TuningSettings, preflight: Preflight) -> list[_Pooled]:
    """Memory and length together, from pre-flight's arithmetic (module docstring, point 4)."""
    gmu_act, len_act = settings.actuators[GMU], settings.actuators[MAX_MODEL_LEN]
    gmu, mml = current.get(GMU), current.get(MAX_MODEL_LEN)
    if gmu is None or mml is None or mml <= 0:
        return []
    raises: list[Decimal] = []
    g = max(gmu_act.step_up(gmu), gmu_act.lower)
    while g <= gmu_act.upper:
        raises.append(g)
        g = gmu_act.step_up(g)
    # 1. keep max_model_len: the smallest gmu that holds one request of it
    for g in raises:
        if preflight.check({GMU: g}).ok:
            return [({GMU: g}, {GMU: g}, "memory_and_length")]
    out: list[_Pooled] = []
    if mml > len_act.upper:
        return out  # a running length above the bound is not cut into it silently (the Observer escalates those)
    # 2. no single parameter: gmu as high as free memory allows, max_model_len cut to what then fits
    if settings.max_params_per_candidate >= 2:
        for g in reversed(raises):
            tokens = preflight.capacity_tokens(g)
            if tokens is None:
                break
            cut = len_act.floor_to_step(min(Decimal(tokens), mml))
            if len_act.lower <= cut < mml and preflight.check({GMU: g, MAX_MODEL_LEN: cut}).ok:
                out.append(({GMU: g, MAX_MODEL_LEN: cut}, {GMU: g, MAX_MODEL_LEN: cut}, "memory_and_length"))
                break
    # 3. cut max_model_len alone at the running gmu
    tokens = preflight.capacity_tokens(gmu)
    if tokens is not None:
        cut = len_act.floor_to_step(min(Decimal(tokens), mml))
        if len_act.lower <= cut < mml:
            out.append(({MAX_MODEL_LEN: cut}, {MAX_MODEL_LEN: cut}, "memory_and_length"))
    return out


def _cost(params: Mapping[str, Decimal], current: Mapping[str, Decimal]) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(context given up, gmu taken from other tenants, sequences given up, gmu given back)."""
    def delta(name: str, sign: int) -> Decimal:
        if name not in params or current.get(name) is None:
            return Decimal(0)
        return max(Decimal(0), sign * (current[name] - params[name]))

    return delta(MAX_MODEL_LEN, 1), delta(GMU, -1), delta(MAX_NUM_SEQS, 1), delta(GMU, 1)


def _why(error_class: str, params: Mapping[str, Decimal], current: Mapping[str, Decimal], settings: TuningSettings,
         total_gib: Decimal | None, length_resolved: bool = False) -> str:
    parts: list[str] = []
    mml = current.get(MAX_MODEL_LEN)
    if error_class in KV_LENGTH_CLASSES and MAX_MODEL_LEN not in params and mml is not None and mml > 0:
        parts.append(f"keeps max_model_len {int(mml)}")
    for name in (GMU, MAX_MODEL_LEN, MAX_NUM_SEQS):
        if name not in params:
            continue
        act, new, old = settings.actuators[name], params[name], current.get(name)
        short = name.split(".", 1)[1]
        if old is None:
            parts.append(f"sets {short} to {act.format(new)} (running value unknown)")
            continue
        change = f"{act.format(old)}→{act.format(new)}"
        if name == GMU:
            size = f" ({'+' if new > old else '−'}{(abs(new - old) * total_gib).quantize(Decimal('0.01'))} GiB" if total_gib else ""
            if new > old:
                parts.append(f"raises {short} {change}" + (f"{size} of the GPU)" if size else ""))
            else:
                parts.append(f"lowers {short} {change}" + (f"{size} of KV cache)" if size else ""))
        elif name == MAX_MODEL_LEN:
            lost = old - new
            alone = " alone" if len(params) == 1 else ""
            if lost > 0:
                share = (lost * 100 / old).quantize(Decimal("1")) if old > 0 else Decimal(0)
                parts.append(f"cuts {short} {change}{alone}: gives up {int(lost):,} tokens of context ({share}%)")
            else:
                parts.append(f"raises {short} {change}")
        else:
            lost = old - new
            parts.append(f"lowers {short} {change}: {int(lost)} fewer concurrent sequences" if lost > 0 else f"raises {short} {change}")
    if length_resolved and mml is not None and (MAX_MODEL_LEN in params or error_class in KV_LENGTH_CLASSES):
        parts.append(f"the running max_model_len {int(mml)} is the length vLLM resolved (the target config sets none, or auto)")
    return "; ".join(parts)


def generate_candidates(intent: Mapping[str, Any], current: Mapping[str, Decimal], settings: TuningSettings,
                        max_candidates: int = 3, preflight: Preflight | None = None,
                        length_resolved: bool = False) -> list[Candidate]:
    """Ranked candidates for one intent (see the module docstring); [] when the class has no actuator and no seed.

    ``length_resolved``: the running max_model_len is the one vLLM resolved (the target config sets none or
    ``auto``); the why of each candidate that keeps or cuts it says so.
    """
    error_class = str(intent.get("error_class") or intent.get("class") or "")
    values = dict(intent.get("values") or {})
    seed = intent.get("seed_fix") or None
    alternatives = values.get("_alternatives") or []
    limit = settings.max_params_per_candidate
    pool: list[_Pooled] = []

    seed_dec: dict[str, Decimal] = {}
    if seed:
        seed_dec = {p: to_decimal(v) for p, v in seed.items() if p in settings.actuators}
        pool.append((seed_dec, {p: uncapped_target(error_class, values, p, v, current, settings) for p, v in seed_dec.items()},
                     "seed_fix"))
    for alt in alternatives:
        alt_dec = {p: to_decimal(v) for p, v in dict(alt).items() if p in settings.actuators}
        pool.append((alt_dec, {p: uncapped_target(error_class, values, p, v, current, settings) for p, v in alt_dec.items()},
                     "alternative"))
    pool += _grid_pool(error_class, values, seed_dec, current, settings, max_candidates)
    # a limit the model itself sets (max_position_embeddings) is not a memory question
    planned = (_length_plan(current, settings, preflight)
               if preflight is not None and error_class in KV_LENGTH_CLASSES and values.get("derived_max_model_len") is None else [])

    def usable(params: Mapping[str, Decimal]) -> bool:
        return (bool(params) and len(params) <= limit and all(settings.actuators[p].in_bounds(v) for p, v in params.items())
                and not all(current.get(p) == v for p, v in params.items()))  # the last: changes nothing

    seen: set[tuple[tuple[str, Decimal], ...]] = set()
    chosen: list[_Pooled] = []
    # the Observer's fixes and the grid in their order (at most max_candidates, so the grid keeps its
    # mix of primary steps and the secondary combination), then pre-flight's own plan
    for kind, entries in (("pool", pool), ("plan", planned)):
        taken = 0
        for params, uncapped, origin in entries:
            key = tuple(sorted(params.items()))
            if key in seen or not usable(params) or (kind == "pool" and taken >= max_candidates):
                continue
            seen.add(key)
            chosen.append((params, uncapped, origin))
            taken += 1
    ranked: list[tuple[tuple[Any, ...], _Pooled]] = []
    for index, (params, uncapped, origin) in enumerate(chosen):
        rejected = preflight is not None and not preflight.check(params).ok
        context, taken, sequences, given_back = _cost(params, current)
        ranked.append(((rejected, context, len(params), taken, sequences, given_back, index), (params, uncapped, origin)))
    ranked.sort(key=lambda item: item[0])
    total = preflight.gpu.total_gib if preflight is not None and preflight.gpu is not None else None
    out: list[Candidate] = []
    for rank, (_key, (params, uncapped, origin)) in enumerate(ranked[:max_candidates], start=1):
        acts = {p: settings.actuators[p] for p in params}
        out.append(Candidate({p: acts[p].python_value(v) for p, v in params.items()},
                             {p: acts[p].python_value(uncapped.get(p, v)) for p, v in params.items()}, origin,
                             rank, _why(error_class, params, current, settings, total, length_resolved)))
    return out
