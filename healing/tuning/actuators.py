"""Bounded actuators for config tuning, with exact step-grid arithmetic.

An actuator is one configuration parameter the tuner may change (``vllm.gpu_memory_utilization``,
``vllm.max_num_seqs``, ``vllm.max_model_len``), with hard bounds and a step. All arithmetic is done
with :class:`~decimal.Decimal` (integers for integer parameters) so a grid value is exactly ``0.65``,
never ``0.6500000000000001``. The grid is anchored at the lower bound: ``lower + k·step``.

Snapping is done in the *safe* direction (VLLM_MESSAGES.md): when a fix lowers a value the minimal
target is floored onto the grid, when it raises a value the target is ceiled. A running value outside
the bounds (vLLM's default ``max_num_seqs=256`` against our ``[2, 16]``) is legal input everywhere.

The ``tuning`` section of the YAML config may override the defaults::

    tuning:
      max_params_per_candidate: 2
      actuators:
        vllm.gpu_memory_utilization: {min: 0.60, max: 0.90, step: 0.05}
        vllm.max_num_seqs: {min: 2, max: 16, step: 2}
        vllm.max_model_len: {min: 1024, max: 8192, step: 512}
      observer:
        free_memory_margin: 0.02          # D: gmu_new = floor(free/total - margin)
        foreign_memory_fraction: 0.5      # torch OOM: escalate when other processes hold more
        preemption_count: 3               # soft signals needed within the window ...
        preemption_window_seconds: 600    # ... before a preemption event is emitted
        kv_pressure_percent: 95           # stats line: KV usage at/above this with waiting requests
        pending_horizon_lines: 200        # how far a pending match waits for a better line
        cooldown_seconds: 900             # per (subsystem, class) intent cooldown

Other ``tuning`` keys (mode, rate limits, canary) belong to the orchestration and are not checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Literal

from healing.errors import ConfigError

Number = Decimal | int | float | str
Direction = Literal["lower", "raise"]

GMU = "vllm.gpu_memory_utilization"
MAX_NUM_SEQS = "vllm.max_num_seqs"
MAX_MODEL_LEN = "vllm.max_model_len"

# Short names accepted on the command line (--current gpu_memory_utilization=0.8) and in vLLM's
# own "non-default args" dump; all map to the dotted actuator name.
ALIASES = {
    "gpu_memory_utilization": GMU,
    "gpu-memory-utilization": GMU,
    "gmu": GMU,
    "max_num_seqs": MAX_NUM_SEQS,
    "max-num-seqs": MAX_NUM_SEQS,
    "max_model_len": MAX_MODEL_LEN,
    "max-model-len": MAX_MODEL_LEN,
}


def to_decimal(value: Number) -> Decimal:
    """Exact decimal of a number; floats go through ``str`` so 0.6 stays 0.6 (not 0.59999…)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value).strip())


@dataclass(frozen=True)
class Actuator:
    """One tunable parameter: hard bounds ``[lower, upper]`` and a grid ``lower + k·step``."""

    name: str
    lower: Decimal
    upper: Decimal
    step: Decimal
    integer: bool
    flag: str  # the vLLM command-line flag, e.g. --gpu-memory-utilization

    def _grid_index(self, value: Decimal, rounding: str) -> Decimal:
        return ((value - self.lower) / self.step).to_integral_value(rounding=rounding)

    def floor_to_step(self, value: Number) -> Decimal:
        """Largest grid value ≤ ``value`` (may lie outside the bounds; callers decide what that means)."""
        v = to_decimal(value)
        return self.lower + self._grid_index(v, ROUND_FLOOR) * self.step

    def ceil_to_step(self, value: Number) -> Decimal:
        """Smallest grid value ≥ ``value`` (may lie outside the bounds)."""
        v = to_decimal(value)
        return self.lower + self._grid_index(v, ROUND_CEILING) * self.step

    def snap(self, value: Number, direction: Direction) -> Decimal:
        """Snap in the safe direction: floor when lowering, ceil when raising."""
        return self.floor_to_step(value) if direction == "lower" else self.ceil_to_step(value)

    def in_bounds(self, value: Number) -> bool:
        v = to_decimal(value)
        return self.lower <= v <= self.upper

    def step_down(self, current: Number) -> Decimal:
        """The largest grid value strictly below ``current`` (one step down; off-grid values snap)."""
        v = to_decimal(current)
        below = self.floor_to_step(v)
        return below - self.step if below == v else below

    def step_up(self, current: Number) -> Decimal:
        """The smallest grid value strictly above ``current``."""
        v = to_decimal(current)
        above = self.ceil_to_step(v)
        return above + self.step if above == v else above

    def python_value(self, value: Decimal) -> int | float:
        """The JSON/CLI value: an int for integer actuators, else the float whose repr is the decimal."""
        if self.integer:
            return int(value)
        return float(value.normalize()) if value != 0 else 0.0

    def format(self, value: Number) -> str:
        """Plain text without exponent or trailing zeros (0.80 → '0.8', 4096 → '4096')."""
        v = to_decimal(value)
        if self.integer:
            return str(int(v))
        text = format(v.normalize(), "f")
        return text


@dataclass(frozen=True)
class ObserverSettings:
    """Numbers the Observer uses to turn log messages into fixes (defaults documented in the module)."""

    free_memory_margin: Decimal = Decimal("0.02")
    foreign_memory_fraction: Decimal = Decimal("0.5")
    preemption_count: int = 3
    preemption_window_seconds: int = 600
    kv_pressure_percent: Decimal = Decimal("95")
    pending_horizon_lines: int = 200
    cooldown_seconds: int = 900


@dataclass(frozen=True)
class TuningSettings:
    """The actuators, the scope guard and the Observer numbers parsed from the ``tuning`` section."""

    actuators: dict[str, Actuator]
    max_params_per_candidate: int = 2
    observer: ObserverSettings = field(default_factory=ObserverSettings)

    def actuator(self, name: str) -> Actuator:
        return self.actuators[canonical_param(name)]


DEFAULT_ACTUATORS: dict[str, Actuator] = {
    GMU: Actuator(GMU, Decimal("0.60"), Decimal("0.90"), Decimal("0.05"), False, "--gpu-memory-utilization"),
    MAX_NUM_SEQS: Actuator(MAX_NUM_SEQS, Decimal(2), Decimal(16), Decimal(2), True, "--max-num-seqs"),
    MAX_MODEL_LEN: Actuator(MAX_MODEL_LEN, Decimal(1024), Decimal(8192), Decimal(512), True, "--max-model-len"),
}


def default_settings() -> TuningSettings:
    return TuningSettings(actuators=dict(DEFAULT_ACTUATORS))


def canonical_param(name: str) -> str:
    """``gpu_memory_utilization`` / ``gpu-memory-utilization`` / ``vllm.gpu_memory_utilization`` → dotted name."""
    key = name.strip()
    if key in DEFAULT_ACTUATORS:
        return key
    short = key[5:] if key.startswith("vllm.") else key
    if short in ALIASES:
        return ALIASES[short]
    raise KeyError(key)


def vllm_defaults(version: str | None = None) -> dict[str, Decimal | None]:
    """vLLM's own defaults for the running values when nothing else is known.

    gmu per version from the message catalogue (0.9 up to 0.17, 0.92 from 0.20 — read from vLLM's
    source); max_num_seqs 256 (V0; V1 may pick 1024 on big GPUs, 256 is the conservative reading);
    max_model_len comes from the model, so it is unknown.
    """
    from healing.tuning.catalogue import default_gmu

    return {GMU: default_gmu(version), MAX_NUM_SEQS: Decimal(256), MAX_MODEL_LEN: None}


def validate_fix(fix: Mapping[str, Any], settings: TuningSettings | None = None) -> dict[str, int | float]:
    """Check a candidate (dotted name → value): known actuators, in bounds, on the grid, ≤ max params.

    Returns the candidate with canonical names and JSON-ready values; raises ConfigError otherwise.
    """
    settings = settings or default_settings()
    if len(fix) > settings.max_params_per_candidate:
        raise ConfigError(f"candidate changes {len(fix)} parameters, at most {settings.max_params_per_candidate} allowed")
    out: dict[str, int | float] = {}
    for name, value in fix.items():
        try:
            act = settings.actuator(name)
            v = to_decimal(value)
        except KeyError:
            raise ConfigError(f"candidate: unknown parameter {name!r}") from None
        except (InvalidOperation, TypeError, ValueError):
            raise ConfigError(f"candidate: {name} must be a number, got {value!r}") from None
        if not act.in_bounds(v):
            raise ConfigError(f"candidate: {act.name}={act.format(v)} is outside [{act.format(act.lower)}, {act.format(act.upper)}]")
        if act.floor_to_step(v) != v:
            raise ConfigError(f"candidate: {act.name}={act.format(v)} is not on the step grid ({act.format(act.step)})")
        out[act.name] = act.python_value(v)
    return out


# --------------------------------------------------------------------------- config parsing

_ACTUATOR_KEYS = {"min", "max", "step"}
_OBSERVER_FIELDS = {
    "free_memory_margin": (Decimal, Decimal("0"), Decimal("0.5")),
    "foreign_memory_fraction": (Decimal, Decimal("0"), Decimal("1")),
    "preemption_count": (int, 1, 100000),
    "preemption_window_seconds": (int, 1, 7 * 86400),
    "kv_pressure_percent": (Decimal, Decimal("1"), Decimal("100")),
    "pending_horizon_lines": (int, 1, 100000),
    "cooldown_seconds": (int, 0, 30 * 86400),
}


def _number(key: str, value: Any, integer: bool) -> Decimal:
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        raise ConfigError(f"config: {key} must be {'an integer' if integer else 'a number'}, got {value!r}")
    try:
        d = to_decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ConfigError(f"config: {key} must be {'an integer' if integer else 'a number'}, got {value!r}") from None
    if not d.is_finite() or (integer and d != d.to_integral_value()):
        raise ConfigError(f"config: {key} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    return d


def parse_tuning_section(section: Mapping[str, Any] | None) -> TuningSettings:
    """Build :class:`TuningSettings` from ``settings.section("tuning")``; one ConfigError line per problem."""
    section = section or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config: 'tuning' must be a mapping, got {type(section).__name__}")
    actuators = dict(DEFAULT_ACTUATORS)
    raw_acts = section.get("actuators") or {}
    if not isinstance(raw_acts, Mapping):
        raise ConfigError("config: tuning.actuators must be a mapping of parameter name to {min, max, step}")
    for name, spec in raw_acts.items():
        try:
            canon = canonical_param(str(name))
        except KeyError:
            raise ConfigError(f"config: tuning.actuators.{name} is not a known parameter ({', '.join(DEFAULT_ACTUATORS)})") from None
        key = f"tuning.actuators.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"config: {key} must be a mapping with min, max, step")
        unknown = set(spec) - _ACTUATOR_KEYS
        if unknown:
            raise ConfigError(f"config: {key} has unknown key(s) {', '.join(sorted(map(str, unknown)))} (expected min, max, step)")
        base = actuators[canon]
        lower = _number(f"{key}.min", spec["min"], base.integer) if "min" in spec else base.lower
        upper = _number(f"{key}.max", spec["max"], base.integer) if "max" in spec else base.upper
        step = _number(f"{key}.step", spec["step"], base.integer) if "step" in spec else base.step
        if step <= 0:
            raise ConfigError(f"config: {key}.step must be > 0, got {step}")
        if lower <= 0:
            raise ConfigError(f"config: {key}.min must be > 0, got {lower}")
        if lower > upper:
            raise ConfigError(f"config: {key}.min ({lower}) must not exceed max ({upper})")
        if canon == GMU and upper > 1:
            raise ConfigError(f"config: {key}.max must be ≤ 1, got {upper}")
        if (upper - lower) % step != 0:
            raise ConfigError(f"config: {key}: max - min ({upper - lower}) must be a multiple of step ({step})")
        actuators[canon] = replace(base, lower=lower, upper=upper, step=step)

    max_params = section.get("max_params_per_candidate", 2)
    mp = _number("tuning.max_params_per_candidate", max_params, True)
    if not 1 <= mp <= len(DEFAULT_ACTUATORS):
        raise ConfigError(f"config: tuning.max_params_per_candidate must be between 1 and {len(DEFAULT_ACTUATORS)}, got {mp}")

    raw_obs = section.get("observer") or {}
    if not isinstance(raw_obs, Mapping):
        raise ConfigError("config: tuning.observer must be a mapping")
    unknown = set(raw_obs) - set(_OBSERVER_FIELDS)
    if unknown:
        raise ConfigError(f"config: tuning.observer has unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    obs_values: dict[str, Any] = {}
    for name, (kind, lo, hi) in _OBSERVER_FIELDS.items():
        if name not in raw_obs:
            continue
        key = f"tuning.observer.{name}"
        d = _number(key, raw_obs[name], kind is int)
        if not lo <= d <= hi:
            raise ConfigError(f"config: {key} must be between {lo} and {hi}, got {d}")
        obs_values[name] = int(d) if kind is int else d
    return TuningSettings(actuators=actuators, max_params_per_candidate=int(mp), observer=ObserverSettings(**obs_values))
