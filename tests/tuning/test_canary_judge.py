"""The canary judge (Kayenta's): per-metric pass/high/low, score = share passing, critical metrics, config keys."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.charts import JUDGE_COLORS, score_breakdown_figure
from healing.errors import ConfigError
from healing.tuning.canary import GATES, CanaryResult, judge_metric, score_result
from healing.tuning.runner_config import MetricRule, ScoringSettings, parse_runner_settings

PASSED = dict.fromkeys(GATES, True)


def result(**metrics: Any) -> CanaryResult:
    return CanaryResult(dict(PASSED), metrics, ["x"], "log", "", "ok")


def scoring(**section: Any) -> ScoringSettings:
    return parse_runner_settings({"scoring": section}).scoring


# rule, value, baseline value → classification, min, max
CASES = [
    # against the baseline: 400 × 1.25 = 500 allowed
    (MetricRule("latency_p95_ms", "increase_is_bad", 0.25), 500.0, 400.0, "pass", None, 500.0),
    (MetricRule("latency_p95_ms", "increase_is_bad", 0.25), 500.5, 400.0, "high", None, 500.0),
    (MetricRule("latency_p95_ms", "increase_is_bad", 0.25), 10.0, 400.0, "pass", None, 500.0),  # faster never fails
    (MetricRule("throughput_tps", "decrease_is_bad", 0.2), 79.0, 100.0, "low", 80.0, None),
    (MetricRule("throughput_tps", "decrease_is_bad", 0.2), 80.0, 100.0, "pass", 80.0, None),
    (MetricRule("kv_cache_usage_max", "either_is_bad", 0.5, 0.05), 0.19, 0.5, "low", 0.2, 0.8),
    (MetricRule("kv_cache_usage_max", "either_is_bad", 0.5, 0.05), 0.81, 0.5, "high", 0.2, 0.8),
    # a baseline at 0: the margin is all the slack there is
    (MetricRule("requests_waiting_max", "increase_is_bad", 0.5, 1.0), 1.0, 0.0, "pass", None, 1.0),
    (MetricRule("requests_waiting_max", "increase_is_bad", 0.5, 1.0), 2.0, 0.0, "high", None, 1.0),
    (MetricRule("preemptions", "increase_is_bad", 0.0, 0.0), 1.0, 0.0, "high", None, 0.0),
    # no baseline value: the target is the limit, without tolerance or margin
    (MetricRule("latency_p95_ms", "increase_is_bad", 0.25, 0.0, target=2000.0), 2000.1, None, "high", None, 2000.0),
    (MetricRule("throughput_tps", "decrease_is_bad", 0.2, 0.0, target=20.0), 20.0, None, "pass", 20.0, None),
    (MetricRule("requests_waiting_max", "increase_is_bad", 0.5, 1.0, target=1.0), 2.0, None, "high", None, 1.0),
    # nothing to judge
    (MetricRule("kv_cache_usage_max", target=0.9), None, 0.5, "nodata", None, None),
    (MetricRule("ttft_p95_ms"), 12.0, None, "nodata", None, None),
]


@pytest.mark.parametrize(("rule", "value", "base", "kind", "lo", "hi"), CASES)
def test_classification_table(rule: MetricRule, value: float | None, base: float | None, kind: str,
                              lo: float | None, hi: float | None) -> None:
    entry = judge_metric("m", rule, value, base)
    assert (entry["classification"], entry["min"], entry["max"]) == (kind, lo, hi)


def test_entry_says_value_reference_and_why() -> None:
    entry = judge_metric("latency_p95", MetricRule("latency_p95_ms", "increase_is_bad", 0.25), 612.0, 400.0)
    assert entry == {"metric": "latency_p95_ms", "value": 612.0, "reference": 400.0, "against": "baseline",
                     "direction": "increase_is_bad", "critical": False, "min": None, "max": 500.0,
                     "classification": "high", "why": "612 > allowed 500 (baseline 400)"}
    assert judge_metric("x", MetricRule("ttft_p95_ms"), 3.0, None)["why"] == "no baseline value and no target"


BASE = {"latency_p95_ms": 400.0, "throughput_tps": 100.0, "error_rate": 0.0, "kv_cache_usage_max": 0.5,
        "preemptions": 0.0, "requests_waiting_max": 0.0}


@pytest.mark.parametrize(("changes", "score", "verdict", "passed"), [
    ({}, 1.0, "pass", 6),
    ({"latency_p95_ms": 900.0}, 0.8333, "pass", 5),
    ({"latency_p95_ms": 900.0, "throughput_tps": 10.0}, 0.6667, "inconclusive", 4),
    ({"latency_p95_ms": 900.0, "throughput_tps": 10.0, "preemptions": 3.0}, 0.5, "failed", 3),
    # errors are critical: a failed critical metric fails the run although 5 of 6 pass
    ({"error_rate": 0.125}, 0.8333, "failed", 5),
])
def test_score_is_the_share_of_passing_metrics(changes: dict[str, float], score: float, verdict: str, passed: int) -> None:
    got, breakdown, v = score_result(result(**{**BASE, **changes}), result(**BASE), ScoringSettings())
    assert (got, v, len(breakdown["passed"]), len(breakdown["judged"])) == (score, verdict, passed, 6)
    assert breakdown["against"] == "baseline" and breakdown["no_data"] == []


def test_four_of_five_with_no_data_listed_and_critical_why() -> None:
    # /metrics absent: kv usage has no data and is left out; 4 of 5 pass → 0.8 → pass
    cand = {**BASE, "kv_cache_usage_max": None, "throughput_tps": 50.0}
    score, breakdown, verdict = score_result(result(**cand), result(**BASE), ScoringSettings())
    assert (score, verdict) == (0.8, "pass")
    assert breakdown["no_data"] == ["kv_cache_usage"]
    assert breakdown["why"] == "4 of 5 metrics pass (0.8 ≥ pass threshold 0.8); not passing: throughput low; no data: kv_cache_usage"
    assert breakdown["per_metric"]["throughput"]["classification"] == "low"

    score, breakdown, verdict = score_result(result(**{**BASE, "error_rate": 0.25}), result(**BASE), ScoringSettings())
    assert (verdict, breakdown["critical_failed"]) == ("failed", ["errors"])
    assert breakdown["why"] == "critical metric failed: errors high: 0.25 > allowed 0 (baseline 0)"


def test_targets_when_no_baseline_ran_and_gates_first() -> None:
    cand = {"latency_p95_ms": 2500.0, "throughput_tps": 30.0, "error_rate": 0.0}
    score, breakdown, verdict = score_result(result(**cand), None, ScoringSettings())
    assert (score, verdict, breakdown["against"]) == (0.6667, "inconclusive", "targets")
    assert breakdown["per_metric"]["latency_p95"]["reference"] == 2000.0
    assert breakdown["no_data"] == ["kv_cache_usage", "preemptions", "requests_waiting"]
    # a baseline that failed its gates is no baseline
    failed_base = CanaryResult({**PASSED, "healthy": False}, BASE, [], "", "", "")
    assert score_result(result(**cand), failed_base, ScoringSettings())[1]["against"] == "targets"
    gated = CanaryResult({**PASSED, "probe_passed": False}, cand, [], "", "", "")
    assert score_result(gated, None, ScoringSettings()) == (
        None, {"verdict": "failed", "failed_gates": ["probe_passed"], "why": "hard gate(s) failed: probe_passed"}, "failed")


def test_nothing_judged_is_inconclusive() -> None:
    only_kv = scoring(metrics={n: False for n in ("latency_p95", "throughput", "errors", "preemptions", "requests_waiting")})
    score, breakdown, verdict = score_result(result(error_rate=0.0), None, only_kv)
    assert (score, verdict, breakdown["why"]) == (0.0, "inconclusive", "no judged metric had data; no data: kv_cache_usage")


values = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(cand=st.fixed_dictionaries({k: values for k in BASE}), base=st.fixed_dictionaries({k: values for k in BASE}),
       with_base=st.booleans())
def test_score_is_passed_over_judged(cand: dict[str, float | None], base: dict[str, float | None], with_base: bool) -> None:
    score, breakdown, verdict = score_result(result(**cand), result(**base) if with_base else None, ScoringSettings())
    assert 0.0 <= score <= 1.0
    judged = breakdown["judged"]
    if judged:
        assert score == round(len(breakdown["passed"]) / len(judged), 4)
    assert set(judged) | set(breakdown["no_data"]) == set(ScoringSettings().metrics)
    if breakdown["critical_failed"]:
        assert verdict == "failed"


# ------------------------------------------------------------------ config

def test_defaults_and_start_timeout() -> None:
    rs = parse_runner_settings({})
    assert rs.canary.start_timeout_s == 600.0 and rs.canary.probe.api == "auto" and rs.canary.metrics_url is None
    assert list(rs.scoring.metrics) == ["latency_p95", "throughput", "errors", "kv_cache_usage", "preemptions", "requests_waiting"]
    assert rs.scoring.metrics["errors"] == MetricRule("error_rate", "increase_is_bad", 0.0, 0.0, True, 0.0)
    assert rs.scoring.metrics["latency_p95"].target == 2000.0 and rs.scoring.metrics["throughput"].target == 20.0
    assert rs.scoring.metrics == ScoringSettings().metrics


def test_metric_overrides_targets_and_deprecated_weights() -> None:
    rs = parse_runner_settings({"canary": {"probe": {"max_error_rate": 0.1}},
                                "scoring": {"latency_target_ms": 900, "metrics": {
                                    "latency_p95": {"tolerance": 0.1, "critical": True}, "preemptions": False,
                                    "ttft_p95": {"target": 250}}}})
    m = rs.scoring.metrics
    assert list(m) == ["latency_p95", "throughput", "errors", "kv_cache_usage", "requests_waiting", "ttft_p95"]
    assert m["latency_p95"] == MetricRule("latency_p95_ms", "increase_is_bad", 0.1, 0.0, True, 900.0)
    assert m["errors"].target == 0.1 and m["ttft_p95"].target == 250.0
    # weights: 0 drops a metric, > 0 judges it (kv_headroom is not judged by default)
    old = parse_runner_settings({"scoring": {"weights": {"latency": 0.5, "throughput": 0, "errors": 0.5, "kv_headroom": 0.2}}})
    assert list(old.scoring.metrics) == ["latency_p95", "errors", "kv_cache_usage", "preemptions", "requests_waiting", "kv_headroom"]


@pytest.mark.parametrize(("section", "message"), [
    ({"scoring": {"metrics": {"latency_p99": {}}}}, "config: tuning.scoring.metrics has unknown key(s) latency_p99"),
    ({"scoring": {"metrics": {"errors": {"direction": "up"}}}},
     "config: tuning.scoring.metrics.errors.direction must be one of increase_is_bad, decrease_is_bad, either_is_bad, got 'up'"),
    ({"scoring": {"metrics": {"errors": {"critical": "yes"}}}}, "config: tuning.scoring.metrics.errors.critical must be true or false"),
    ({"scoring": {"metrics": {"errors": {"tolerance": -1}}}}, "config: tuning.scoring.metrics.errors.tolerance"),
    ({"scoring": {"metrics": dict.fromkeys(("latency_p95", "throughput", "errors", "kv_cache_usage", "preemptions",
                                            "requests_waiting"), False)}},
     "config: tuning.scoring judges no metric (every one was dropped)"),
    ({"canary": {"probe": {"api": "responses"}}}, "config: tuning.canary.probe.api must be auto, chat or completions, got 'responses'"),
    ({"canary": {"metrics_url": "localhost:9/metrics"}}, "config: tuning.canary.metrics_url must be an http:// or https:// URL"),
])
def test_bad_scoring_config_is_one_line(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_runner_settings(section)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ------------------------------------------------------------------ the chart

def test_chart_plots_per_metric_results_not_thresholds() -> None:
    cand = {**BASE, "latency_p95_ms": 600.0, "throughput_tps": 50.0, "kv_cache_usage_max": None}
    _score, breakdown, _verdict = score_result(result(**cand), result(**BASE), ScoringSettings())

    fig = score_breakdown_figure(breakdown)

    bar = fig.data[0]
    assert list(bar.y) == ["latency_p95", "throughput", "errors (critical)", "kv_cache_usage", "preemptions", "requests_waiting"]
    # value / allowed limit: 600/500, 80/50 (a decrease), 0/0, no data, 0/0, 0/1
    assert list(bar.x) == [1.2, 1.6, 0.0, 0.0, 0.0, 0.0]
    assert list(bar.text) == ["high", "low", "pass", "no data", "pass", "pass"]
    assert list(bar.marker.color) == [JUDGE_COLORS[k] for k in ("high", "low", "pass", "nodata", "pass", "pass")]
    assert fig.layout.title.text == "Score breakdown: inconclusive, score 0.60"
    assert fig.layout.shapes[0].x0 == 1.0  # the allowed limit
    assert "pass_threshold" not in list(bar.y)


def test_chart_of_a_pre_judge_breakdown_shows_its_components_only() -> None:
    old = {"verdict": "pass", "components": {"latency": 1.0, "throughput": 0.5, "errors": 1.0, "kv_headroom": None},
           "weights": {"latency": 0.35}, "pass_threshold": 0.8, "marginal_threshold": 0.6}
    bar = score_breakdown_figure(old).data[0]
    assert (list(bar.y), list(bar.x)) == (["latency", "throughput", "errors"], [1.0, 0.5, 1.0])
    flat = score_breakdown_figure({"throughput": 0.5, "pass_threshold": 0.8, "marginal_threshold": 0.6}).data[0]
    assert list(flat.y) == ["throughput"]
