"""The orchestration keys of the ``tuning`` config section, validated into :class:`RunnerSettings`.

The actuator/Observer keys are parsed by :func:`healing.tuning.actuators.parse_tuning_section`; this
module reads the rest (defaults in brackets)::

    tuning:
      mode: prod                       # dev | prod | disabled (resolved in healing.config; env wins)
      log_sources:                     # files followed across rotation (strings or mappings)
        - {path: /var/log/vllm.log, subsystem: vllm, start_at_end: false}
      target_config: /etc/vllm/tuning.yaml   # vLLM's own --config YAML (gpu-memory-utilization: 0.85, …);
                                       # the old nested form vllm: {gpu_memory_utilization: …} is read and
                                       # migrated to the flat form on the first apply
      reload_command: [systemctl, reload, vllm]   # argv list run after a promotion is written [none]
      promotion_ttl_s: 86400           # a pending_review promotion expires after this
      verify_window_s: 600             # watch the service this long after an apply (0: no watch)
      watch:                           # the post-promotion watch (healing.tuning.watch)
        poll_s: 5                      # the worker's watch job interval
        health_url: null               # e.g. http://127.0.0.1:8000/health (none: no health probes)
        metrics_url: null              # e.g. http://127.0.0.1:8000/metrics (none: no metric regressions)
        probe_timeout_s: 2
        unhealthy_probes: 3            # consecutive failed probes (after the first healthy one) → rollback
        start_timeout_s: 600           # not healthy this long after the apply → rollback
        ignore_classes: [kv_cache_preemption]   # Observer classes in the log that do not roll back
        waiting_factor: 4              # num_requests_waiting above max(waiting_min, before × factor) …
        waiting_min: 16
        preemptions_per_min: 30        # … or num_preemptions_total rising faster than this …
        regression_polls: 3            # … on this many consecutive polls → rollback
      interval_s: 60                   # how often the worker runs the tuning cycle
      stale_after_s: 3600              # a run still "running" after this was interrupted (process killed)
      intents_per_call: 10             # intents taken by one process_pending_intents call
      rate_limits: {max_runs: 3, window_s: 86400, cooldown_s: 21600,
                    backoff_base_s: 21600, backoff_factor: 2, backoff_max_s: 172800}
      candidates: {max_candidates: 3}  # seed fix first, then steps in the safe direction
      gpu_profile: seed                # a simulator profile name or file, or a mapping:
                                       # {total_gib, resident_gib, weights_gib, overhead_gib,
                                       #  kv_bytes_per_token, model_max_len, graph_gib, block_size: 16,
                                       #  vllm_version} (graph_gib counts inside the KV budget from 0.20)
      preflight: {gpu_source: auto, margin_gib: 0,   # auto|nvml|nvidia-smi|message|profile
                  canary_shares_gpu: false}          # true: production's memory is resident for the canary
      canary:
        command: ["{python}", "-m", "healing.tuning.simulator", "--gpu-memory-utilization",
                  "{vllm.gpu_memory_utilization}", …, "--port", "{port}"]   # argv list, never a string
        health_url: "http://{host}:{port}/health"   # readiness; or ready_log_regex
        ready_log_regex: null          # or: a regex (multi-line mode) a log line matches when ready
        host: 127.0.0.1
        start_timeout_s: 600           # vLLM's own engine-ready timeout (VLLM_ENGINE_READY_TIMEOUT_S)
        stop_grace_s: 5
        baseline: true                 # also run the current config for comparison when it can start
        env: {}                        # extra environment for the canary process
        metrics_url: null              # Prometheus text; null: /metrics at the health URL's base
        metrics_interval_s: 0.25       # /metrics scraped this often while the probe runs
        probe: {requests: 8, concurrency: 2, max_tokens: 16, prompt: "…", model: null,
                timeout_s: 30, max_error_rate: 0.0,
                api: auto}             # auto | chat | completions (auto: chat unless no chat template)
      scoring:                         # Kayenta-style judge: score = share of judged metrics that pass
        pass_threshold: 0.8            # score ≥ this: pass
        marginal_threshold: 0.6        # between the two: inconclusive, a human decides
        latency_target_ms: 2000        # latency_p95's limit when no baseline could run
        throughput_target_tps: 20      # throughput's limit when no baseline could run
        metrics:                       # per metric (defaults in METRIC_RULES); false drops one
          latency_p95: {direction: increase_is_bad, tolerance: 0.25, margin: 0, critical: false}
          errors: {direction: increase_is_bad, tolerance: 0, critical: true}   # target: probe.max_error_rate
        weights: {…}                   # deprecated: a weight 0 drops that metric, > 0 judges it

Every problem raises one :class:`~healing.errors.ConfigError` line naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from healing.config import _as_number
from healing.errors import ConfigError

GPU_SOURCES = ("auto", "nvml", "nvidia-smi", "message", "profile")
SCORE_COMPONENTS = ("latency", "throughput", "errors", "kv_headroom")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")
BASE_PLACEHOLDERS = ("python", "port", "host")

# Subsystem names key rate limits and intents and fill 64-character columns.
_SUBSYSTEM = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class LogSource:
    path: Path
    subsystem: str = "vllm"
    start_at_end: bool = False


@dataclass(frozen=True)
class ProbeSettings:
    requests: int = 8
    concurrency: int = 2
    max_tokens: int = 16
    prompt: str = "Say hello to the canary."
    model: str | None = None
    timeout_s: float = 30.0
    max_error_rate: float = 0.0
    api: str = "auto"


@dataclass(frozen=True)
class CanarySettings:
    command: tuple[str, ...] | None = None
    health_url: str | None = "http://{host}:{port}/health"
    ready_log_regex: str | None = None
    host: str = "127.0.0.1"
    # vLLM 0.33 waits VLLM_ENGINE_READY_TIMEOUT_S (envs.py: 600) for its engine core before giving up
    start_timeout_s: float = 600.0
    stop_grace_s: float = 5.0
    baseline: bool = True
    env: dict[str, str] = field(default_factory=dict)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    metrics_url: str | None = None
    metrics_interval_s: float = 0.25

    def placeholders(self) -> set[str]:
        """Every ``{name}`` the command template uses."""
        return {m.group(1) for arg in (self.command or ()) for m in PLACEHOLDER.finditer(arg)}


DIRECTIONS = ("increase_is_bad", "decrease_is_bad", "either_is_bad")


@dataclass(frozen=True)
class MetricRule:
    """How the judge classifies one canary metric (``tuning.scoring.metrics.NAME``)."""

    key: str                        # the canary metric it reads (CanaryResult.metrics)
    direction: str = "increase_is_bad"
    tolerance: float = 0.25         # allowed deviation from the baseline, relative to it
    margin: float = 0.0             # allowed deviation on top, absolute (for baselines at 0)
    critical: bool = False          # failing it fails the run whatever the score
    target: float | None = None     # the limit when no baseline value exists (None: not judged then)


# name: (canary metric, direction, tolerance, margin, critical, target, judged by default). A None target of
# latency_p95 / throughput / errors is filled from latency_target_ms / throughput_target_tps / max_error_rate.
METRIC_RULES: dict[str, tuple[str, str, float, float, bool, float | None, bool]] = {
    "latency_p95": ("latency_p95_ms", "increase_is_bad", 0.25, 0.0, False, None, True),
    "throughput": ("throughput_tps", "decrease_is_bad", 0.2, 0.0, False, None, True),
    "errors": ("error_rate", "increase_is_bad", 0.0, 0.0, True, None, True),
    "kv_cache_usage": ("kv_cache_usage_max", "increase_is_bad", 0.5, 0.05, False, 0.9, True),
    "preemptions": ("preemptions", "increase_is_bad", 0.0, 0.0, False, 0.0, True),
    "requests_waiting": ("requests_waiting_max", "increase_is_bad", 0.5, 1.0, False, 1.0, True),
    "latency_p50": ("latency_p50_ms", "increase_is_bad", 0.25, 0.0, False, None, False),
    "ttft_p95": ("ttft_p95_ms", "increase_is_bad", 0.25, 0.0, False, None, False),
    "kv_headroom": ("kv_headroom", "decrease_is_bad", 0.25, 0.0, False, 0.25, False),
}
# the deprecated tuning.scoring.weights components → the metric each one stands for
WEIGHT_METRICS = {"latency": "latency_p95", "throughput": "throughput", "errors": "errors", "kv_headroom": "kv_headroom"}


def metric_rules(latency_target_ms: float = 2000.0, throughput_target_tps: float = 20.0, max_error_rate: float = 0.0,
                 names: set[str] | None = None) -> dict[str, MetricRule]:
    """The default rules (or those ``names``) with the targets filled in."""
    fill = {"latency_p95": latency_target_ms, "throughput": throughput_target_tps, "errors": max_error_rate}
    return {name: MetricRule(key, direction, tolerance, margin, critical, fill.get(name, target))
            for name, (key, direction, tolerance, margin, critical, target, default) in METRIC_RULES.items()
            if (default if names is None else name in names)}


@dataclass(frozen=True)
class ScoringSettings:
    weights: dict[str, float] = field(default_factory=lambda: {"latency": 0.35, "throughput": 0.35, "errors": 0.2, "kv_headroom": 0.1})
    pass_threshold: float = 0.8
    marginal_threshold: float = 0.6
    latency_target_ms: float = 2000.0
    throughput_target_tps: float = 20.0
    metrics: dict[str, MetricRule] = field(default_factory=metric_rules)


@dataclass(frozen=True)
class GpuProfileSettings:
    """Pre-flight's fallback picture of the GPU (GiB): card size, resident services, model, overhead."""

    total_gib: Decimal
    resident_gib: Decimal
    weights_gib: Decimal | None = None
    overhead_gib: Decimal | None = None
    name: str = "config"
    kv_bytes_per_token: int | None = None   # KV cache bytes per token (all layers): the length check
    model_max_len: int | None = None        # the model's max_position_embeddings
    graph_gib: Decimal | None = None        # CUDA graph memory
    block_size: int = 16
    graph_in_budget: bool = True            # vLLM ≥ 0.20 takes graphs from the KV budget; False: outside it
    vllm_version: str | None = None         # the vLLM whose arithmetic applies (the log's own version wins)


@dataclass(frozen=True)
class WatchSettings:
    """``tuning.watch`` and ``tuning.verify_window_s``: how an applied promotion is watched."""

    verify_window_s: float = 600.0
    poll_s: float = 5.0
    health_url: str | None = None
    metrics_url: str | None = None
    probe_timeout_s: float = 2.0
    unhealthy_probes: int = 3
    start_timeout_s: float = 600.0
    ignore_classes: tuple[str, ...] = ("kv_cache_preemption",)
    waiting_factor: float = 4.0
    waiting_min: float = 16.0
    preemptions_per_min: float = 30.0
    regression_polls: int = 3


@dataclass(frozen=True)
class RunnerSettings:
    log_sources: tuple[LogSource, ...] = ()
    target_config: Path | None = None
    reload_command: tuple[str, ...] | None = None
    promotion_ttl_s: float = 86400.0
    interval_s: float = 60.0
    stale_after_s: float = 3600.0
    intents_per_call: int = 10
    rate_limits: dict[str, float] = field(default_factory=dict)
    max_candidates: int = 3
    gpu_profile: GpuProfileSettings | None = None
    gpu_source: str = "auto"
    preflight_margin_gib: Decimal = Decimal(0)
    canary_shares_gpu: bool = False
    canary: CanarySettings = field(default_factory=CanarySettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)

    def limits(self) -> Any:
        """storage.ratelimit.RateLimits with the configured overrides."""
        from storage.ratelimit import RateLimits

        return RateLimits(**self.rate_limits)


# --------------------------------------------------------------------------- helpers

def _map(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config: {key} must be a mapping, got {type(value).__name__}")
    return value


def _unknown(key: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    extra = set(map(str, data)) - allowed
    if extra:
        raise ConfigError(f"config: {key} has unknown key(s) {', '.join(sorted(extra))} (expected {', '.join(sorted(allowed))})")


def _num(key: str, value: Any, kind: type = float, lo: float | None = None, hi: float | None = None) -> Any:
    return _as_number(key, value, kind, lo, hi)


def _gib(key: str, value: Any) -> Decimal:
    number = _num(key, value, float, 0)
    return Decimal(repr(number)) if isinstance(value, float) else Decimal(str(value))


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"config: {key} must be true or false, got {value!r}")


def _str(key: str, value: Any, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"config: {key} must be a non-empty string, got {value!r}")
    return value


def argv_list(key: str, value: Any) -> tuple[str, ...] | None:
    """An argv list of strings/numbers; a shell string is refused (it would need a shell to split)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(f"config: {key} must be an argv list such as [\"vllm\", \"serve\", …], not a shell string {value[:60]!r}")
    if not isinstance(value, list) or not value:
        raise ConfigError(f"config: {key} must be a non-empty argv list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ConfigError(f"config: {key}[{i}] must be a string, got {item!r}")
        out.append(str(item))
    return tuple(out)


# --------------------------------------------------------------------------- parsing

def parse_gpu_profile(value: Any) -> GpuProfileSettings | None:
    """``tuning.gpu_profile``: a mapping, or a simulator profile name/file (reused as the GPU picture)."""
    if value is None:
        return None
    if isinstance(value, str):
        from healing.tuning.simulator import load_profile

        try:
            p = load_profile(value)
        except ValueError as exc:
            raise ConfigError(f"config: tuning.gpu_profile: {str(exc).removeprefix('--profile: ')}") from None
        from healing.tuning import simulator

        # the simulator's default log format is the vLLM whose arithmetic its profile follows
        version = simulator.VERSIONS[simulator.SimConfig().log_format]
        inside = tuple(int(x) for x in version.split(".")[:2]) >= (0, 20)
        return GpuProfileSettings(total_gib=p.total_gib, resident_gib=p.other_processes_gib, weights_gib=p.weights_gib,
                                  overhead_gib=p.non_torch_gib + p.activation_peak_gib, name=p.name,
                                  kv_bytes_per_token=p.kv_bytes_per_token, model_max_len=p.model_max_len,
                                  graph_gib=p.graph_capture_gib, block_size=p.block_size, graph_in_budget=inside,
                                  vllm_version=version)
    data = _map("tuning.gpu_profile", value)
    _unknown("tuning.gpu_profile", data, {"total_gib", "resident_gib", "weights_gib", "overhead_gib", "name",
                                          "kv_bytes_per_token", "model_max_len", "graph_gib", "block_size", "vllm_version"})
    if "total_gib" not in data:
        raise ConfigError("config: tuning.gpu_profile needs total_gib")
    total = _gib("tuning.gpu_profile.total_gib", data["total_gib"])
    if total <= 0:
        raise ConfigError("config: tuning.gpu_profile.total_gib must be > 0")
    resident = _gib("tuning.gpu_profile.resident_gib", data.get("resident_gib", 0))
    if resident > total:
        raise ConfigError("config: tuning.gpu_profile.resident_gib must not exceed total_gib")
    weights = _gib("tuning.gpu_profile.weights_gib", data["weights_gib"]) if data.get("weights_gib") is not None else None
    overhead = _gib("tuning.gpu_profile.overhead_gib", data["overhead_gib"]) if data.get("overhead_gib") is not None else None
    per_token, max_len = (None if data.get(k) is None else _num(f"tuning.gpu_profile.{k}", data[k], int, 1)
                          for k in ("kv_bytes_per_token", "model_max_len"))
    graph = _gib("tuning.gpu_profile.graph_gib", data["graph_gib"]) if data.get("graph_gib") is not None else None
    block = _num("tuning.gpu_profile.block_size", data.get("block_size", 16), int, 1, 4096)
    version = _str("tuning.gpu_profile.vllm_version", data.get("vllm_version"))
    if version is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        raise ConfigError(f"config: tuning.gpu_profile.vllm_version must look like 0.33 or 0.33.0, got {version!r}")
    return GpuProfileSettings(total, resident, weights, overhead, str(data.get("name") or "config"), per_token, max_len, graph, block,
                              vllm_version=version)


def _parse_canary(raw: Any) -> CanarySettings:
    data = _map("tuning.canary", raw)
    _unknown("tuning.canary", data, {"command", "health_url", "ready_log_regex", "host", "start_timeout_s", "stop_grace_s",
                                     "baseline", "env", "probe", "metrics_url", "metrics_interval_s"})
    d = CanarySettings()
    command = argv_list("tuning.canary.command", data.get("command"))
    if command:
        from healing.tuning.actuators import DEFAULT_ACTUATORS

        known = set(BASE_PLACEHOLDERS) | set(DEFAULT_ACTUATORS)
        for arg in command:
            for m in PLACEHOLDER.finditer(arg):
                if m.group(1) not in known:
                    raise ConfigError(f"config: tuning.canary.command: unknown placeholder {{{m.group(1)}}} "
                                      f"(known: {', '.join(sorted(known))})")
    health = data.get("health_url", d.health_url)
    health = _str("tuning.canary.health_url", health)
    regex = _str("tuning.canary.ready_log_regex", data.get("ready_log_regex"))
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"config: tuning.canary.ready_log_regex is not a valid regular expression: {exc}") from None
    if command and health is None and regex is None:
        raise ConfigError("config: tuning.canary needs health_url or ready_log_regex to tell when the canary is ready")
    env = _map("tuning.canary.env", data.get("env"))
    probe_raw = _map("tuning.canary.probe", data.get("probe"))
    _unknown("tuning.canary.probe", probe_raw, {"requests", "concurrency", "max_tokens", "prompt", "model", "timeout_s", "max_error_rate",
                                                "api"})
    p = ProbeSettings()
    api = probe_raw.get("api", p.api)
    if api not in ("auto", "chat", "completions"):
        raise ConfigError(f"config: tuning.canary.probe.api must be auto, chat or completions, got {api!r}")
    metrics_url = _str("tuning.canary.metrics_url", data.get("metrics_url"))
    if metrics_url is not None and not metrics_url.startswith(("http://", "https://")):
        raise ConfigError(f"config: tuning.canary.metrics_url must be an http:// or https:// URL template, got {metrics_url[:80]!r}")
    probe = ProbeSettings(
        requests=_num("tuning.canary.probe.requests", probe_raw.get("requests", p.requests), int, 1, 10000),
        concurrency=_num("tuning.canary.probe.concurrency", probe_raw.get("concurrency", p.concurrency), int, 1, 256),
        max_tokens=_num("tuning.canary.probe.max_tokens", probe_raw.get("max_tokens", p.max_tokens), int, 1, 100000),
        prompt=_str("tuning.canary.probe.prompt", probe_raw.get("prompt", p.prompt), allow_none=False) or p.prompt,
        model=_str("tuning.canary.probe.model", probe_raw.get("model")),
        timeout_s=_num("tuning.canary.probe.timeout_s", probe_raw.get("timeout_s", p.timeout_s), float, 0.1, 3600),
        max_error_rate=_num("tuning.canary.probe.max_error_rate", probe_raw.get("max_error_rate", p.max_error_rate), float, 0, 1),
        api=str(api),
    )
    return CanarySettings(
        command=command, health_url=health, ready_log_regex=regex,
        host=_str("tuning.canary.host", data.get("host", d.host), allow_none=False) or d.host,
        start_timeout_s=_num("tuning.canary.start_timeout_s", data.get("start_timeout_s", d.start_timeout_s), float, 0.1, 3600),
        stop_grace_s=_num("tuning.canary.stop_grace_s", data.get("stop_grace_s", d.stop_grace_s), float, 0, 600),
        baseline=_bool("tuning.canary.baseline", data.get("baseline", d.baseline)),
        env={str(k): str(v) for k, v in env.items()}, probe=probe, metrics_url=metrics_url,
        metrics_interval_s=_num("tuning.canary.metrics_interval_s", data.get("metrics_interval_s", d.metrics_interval_s),
                                float, 0.01, 60),
    )


def _parse_rule(name: str, value: Any, base: MetricRule) -> MetricRule:
    key = f"tuning.scoring.metrics.{name}"
    data = _map(key, value)
    _unknown(key, data, {"direction", "tolerance", "margin", "critical", "target"})
    direction = data.get("direction", base.direction)
    if direction not in DIRECTIONS:
        raise ConfigError(f"config: {key}.direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    target = data.get("target", base.target)
    return MetricRule(
        key=base.key, direction=str(direction),
        tolerance=_num(f"{key}.tolerance", data.get("tolerance", base.tolerance), float, 0, 100),
        margin=_num(f"{key}.margin", data.get("margin", base.margin), float, 0),
        critical=_bool(f"{key}.critical", data.get("critical", base.critical)),
        target=None if target is None else _num(f"{key}.target", target, float),
    )


def _parse_scoring(raw: Any, max_error_rate: float = 0.0) -> ScoringSettings:
    data = _map("tuning.scoring", raw)
    _unknown("tuning.scoring", data, {"weights", "pass_threshold", "marginal_threshold", "latency_target_ms", "throughput_target_tps",
                                      "metrics"})
    d = ScoringSettings()
    weights = dict(d.weights)
    wraw = _map("tuning.scoring.weights", data.get("weights"))
    _unknown("tuning.scoring.weights", wraw, set(SCORE_COMPONENTS))
    for name, value in wraw.items():
        weights[str(name)] = _num(f"tuning.scoring.weights.{name}", value, float, 0)
    if not any(weights.values()):
        raise ConfigError("config: tuning.scoring.weights must not all be 0")
    pass_t = _num("tuning.scoring.pass_threshold", data.get("pass_threshold", d.pass_threshold), float, 0, 1)
    marg_t = _num("tuning.scoring.marginal_threshold", data.get("marginal_threshold", d.marginal_threshold), float, 0, 1)
    if marg_t > pass_t:
        raise ConfigError("config: tuning.scoring.marginal_threshold must not exceed pass_threshold")
    latency_t = _num("tuning.scoring.latency_target_ms", data.get("latency_target_ms", d.latency_target_ms), float, 0.001)
    throughput_t = _num("tuning.scoring.throughput_target_tps", data.get("throughput_target_tps", d.throughput_target_tps), float, 0.001)
    # the deprecated weights only choose metrics now: 0 drops the one a component stands for, > 0 judges it
    names = {n for n, spec in METRIC_RULES.items() if spec[6]}
    for component in map(str, wraw):
        if weights[component] > 0:
            names.add(WEIGHT_METRICS[component])
        else:
            names.discard(WEIGHT_METRICS[component])
    every = metric_rules(latency_t, throughput_t, max_error_rate, set(METRIC_RULES))
    mraw = _map("tuning.scoring.metrics", data.get("metrics"))
    _unknown("tuning.scoring.metrics", mraw, set(METRIC_RULES))
    rules = {n: every[n] for n in METRIC_RULES if n in names}
    for name, value in mraw.items():
        if value is False or value is None:
            rules.pop(str(name), None)
        else:
            rules[str(name)] = _parse_rule(str(name), value, every[str(name)])
    if not rules:
        raise ConfigError("config: tuning.scoring judges no metric (every one was dropped)")
    return ScoringSettings(
        weights=weights, pass_threshold=pass_t, marginal_threshold=marg_t,
        latency_target_ms=latency_t, throughput_target_tps=throughput_t,
        metrics={n: rules[n] for n in METRIC_RULES if n in rules},
    )


def _parse_sources(raw: Any) -> tuple[LogSource, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("config: tuning.log_sources must be a list of paths or {path, subsystem, start_at_end} mappings")
    out = []
    for i, item in enumerate(raw):
        key = f"tuning.log_sources[{i}]"
        if isinstance(item, str):
            out.append(LogSource(Path(item).expanduser()))
            continue
        data = _map(key, item)
        _unknown(key, data, {"path", "subsystem", "start_at_end"})
        path = _str(f"{key}.path", data.get("path"), allow_none=False)
        subsystem = _str(f"{key}.subsystem", data.get("subsystem", "vllm"), allow_none=False) or "vllm"
        if not _SUBSYSTEM.fullmatch(subsystem):
            raise ConfigError(f"config: {key}.subsystem must be 1-64 letters, digits, '.', '_' or '-', got {subsystem!r}")
        out.append(LogSource(Path(str(path)).expanduser(), subsystem, _bool(f"{key}.start_at_end", data.get("start_at_end", False))))
    return tuple(out)


def _parse_watch(raw: Any, window: Any) -> WatchSettings:
    data = _map("tuning.watch", raw)
    _unknown("tuning.watch", data, {"poll_s", "health_url", "metrics_url", "probe_timeout_s", "unhealthy_probes",
                                    "start_timeout_s", "ignore_classes", "waiting_factor", "waiting_min",
                                    "preemptions_per_min", "regression_polls"})
    d = WatchSettings()
    ignore = data.get("ignore_classes", list(d.ignore_classes))
    if not isinstance(ignore, list) or not all(isinstance(c, str) and c for c in ignore):
        raise ConfigError("config: tuning.watch.ignore_classes must be a list of Observer class names")
    urls = {}
    for key in ("health_url", "metrics_url"):
        url = _str(f"tuning.watch.{key}", data.get(key))
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"config: tuning.watch.{key} must be an http:// or https:// URL, got {url[:80]!r}")
        urls[key] = url
    return WatchSettings(
        verify_window_s=_num("tuning.verify_window_s", window if window is not None else d.verify_window_s, float, 0, 7 * 86400),
        poll_s=_num("tuning.watch.poll_s", data.get("poll_s", d.poll_s), float, 0.1, 3600),
        health_url=urls["health_url"], metrics_url=urls["metrics_url"],
        probe_timeout_s=_num("tuning.watch.probe_timeout_s", data.get("probe_timeout_s", d.probe_timeout_s), float, 0.1, 120),
        unhealthy_probes=_num("tuning.watch.unhealthy_probes", data.get("unhealthy_probes", d.unhealthy_probes), int, 1, 1000),
        start_timeout_s=_num("tuning.watch.start_timeout_s", data.get("start_timeout_s", d.start_timeout_s), float, 0, 86400),
        ignore_classes=tuple(ignore),
        waiting_factor=_num("tuning.watch.waiting_factor", data.get("waiting_factor", d.waiting_factor), float, 1),
        waiting_min=_num("tuning.watch.waiting_min", data.get("waiting_min", d.waiting_min), float, 0),
        preemptions_per_min=_num("tuning.watch.preemptions_per_min", data.get("preemptions_per_min", d.preemptions_per_min),
                                 float, 0),
        regression_polls=_num("tuning.watch.regression_polls", data.get("regression_polls", d.regression_polls), int, 1, 1000),
    )


_LIMIT_FIELDS = {"max_runs": (int, 0), "window_s": (float, 1), "cooldown_s": (float, 0), "backoff_base_s": (float, 0),
                 "backoff_factor": (float, 1), "backoff_max_s": (float, 0)}


def parse_runner_settings(section: Mapping[str, Any] | None) -> RunnerSettings:
    """Validate the orchestration keys of ``settings.section("tuning")``."""
    section = _map("tuning", section)
    d = RunnerSettings()
    limits_raw = _map("tuning.rate_limits", section.get("rate_limits"))
    _unknown("tuning.rate_limits", limits_raw, set(_LIMIT_FIELDS))
    limits = {name: _num(f"tuning.rate_limits.{name}", limits_raw[name], kind, lo)
              for name, (kind, lo) in _LIMIT_FIELDS.items() if name in limits_raw}
    cands = _map("tuning.candidates", section.get("candidates"))
    _unknown("tuning.candidates", cands, {"max_candidates"})
    pre = _map("tuning.preflight", section.get("preflight"))
    _unknown("tuning.preflight", pre, {"gpu_source", "margin_gib", "canary_shares_gpu"})
    source = str(pre.get("gpu_source", "auto"))
    if source not in GPU_SOURCES:
        raise ConfigError(f"config: tuning.preflight.gpu_source must be one of {', '.join(GPU_SOURCES)}, got {source!r}")
    target = section.get("target_config")
    return RunnerSettings(
        log_sources=_parse_sources(section.get("log_sources")),
        target_config=Path(str(_str("tuning.target_config", target))).expanduser() if target is not None else None,
        reload_command=argv_list("tuning.reload_command", section.get("reload_command")),
        promotion_ttl_s=_num("tuning.promotion_ttl_s", section.get("promotion_ttl_s", d.promotion_ttl_s), float, 1),
        interval_s=_num("tuning.interval_s", section.get("interval_s", d.interval_s), float, 1, 86400),
        stale_after_s=_num("tuning.stale_after_s", section.get("stale_after_s", d.stale_after_s), float, 60, 7 * 86400),
        intents_per_call=_num("tuning.intents_per_call", section.get("intents_per_call", d.intents_per_call), int, 1, 1000),
        rate_limits=limits,
        max_candidates=_num("tuning.candidates.max_candidates", cands.get("max_candidates", d.max_candidates), int, 1, 16),
        gpu_profile=parse_gpu_profile(section.get("gpu_profile")),
        gpu_source=source,
        preflight_margin_gib=_gib("tuning.preflight.margin_gib", pre.get("margin_gib", 0)),
        canary_shares_gpu=_bool("tuning.preflight.canary_shares_gpu", pre.get("canary_shares_gpu", False)),
        canary=(canary := _parse_canary(section.get("canary"))),
        scoring=_parse_scoring(section.get("scoring"), canary.probe.max_error_rate),
        watch=_parse_watch(section.get("watch"), section.get("verify_window_s")),
    )
