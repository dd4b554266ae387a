"""The canary's /metrics reader: vLLM's Prometheus text parsed to exact numbers, histogram quantiles, URLs."""

from __future__ import annotations

import math

import pytest

from healing.tuning.canary import (
    MetricsSnapshot,
    MetricsWatch,
    histogram_quantile,
    metrics_url,
    parse_vllm_metrics,
)
from healing.tuning.runner_config import parse_runner_settings

# What vLLM 0.33 (prometheus_client) serves, two engines (data parallel): counters as _total plus a
# _created gauge, histograms with cumulative buckets, _count, _sum and _created.
BODY = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="demo"} 2.0
vllm:num_requests_running{engine="1",model_name="demo"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="demo"} 3.0
vllm:num_requests_waiting{engine="1",model_name="demo"} 4.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="demo",reason="capacity"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="demo"} 0.625
vllm:kv_cache_usage_perc{engine="1",model_name="demo"} 0.875
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="demo"} 5.0
vllm:num_preemptions_total{engine="1",model_name="demo"} 2.0
# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="demo"} 1.7961689695151367e+09
vllm:num_preemptions_created{engine="1",model_name="demo"} 1.7961689695151367e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="demo"} 10.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.5",model_name="demo"} 30.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.8",model_name="demo"} 40.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="demo"} 40.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="demo"} 40.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="demo"} 17.5
vllm:e2e_request_latency_seconds_bucket{engine="1",le="0.3",model_name="demo"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="0.5",model_name="demo"} 20.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="0.8",model_name="demo"} 60.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="+Inf",model_name="demo"} 60.0
vllm:e2e_request_latency_seconds_count{engine="1",model_name="demo"} 60.0
vllm:e2e_request_latency_seconds_sum{engine="1",model_name="demo"} 36.0
# HELP vllm:e2e_request_latency_seconds_created Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds_created gauge
vllm:e2e_request_latency_seconds_created{engine="0",model_name="demo"} 1.796168969515149e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="demo"} 50.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="demo"} 100.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="demo"} 100.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="demo"} 100.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="demo"} 1.2
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="demo"} 1234.0
"""


def test_parse_sums_engines_and_takes_the_fullest_kv_cache() -> None:
    snap = parse_vllm_metrics(BODY)

    assert snap.kv_cache_usage == 0.875  # the fullest engine, not the sum
    assert snap.preemptions_total == 7.0  # _total summed, _created ignored
    assert (snap.requests_waiting, snap.requests_running) == (7.0, 3.0)  # waiting_by_reason not double counted
    assert snap.histograms["e2e"] == {0.3: 10.0, 0.5: 50.0, 0.8: 100.0, math.inf: 100.0}
    assert snap.histograms["ttft"] == {0.01: 50.0, 0.02: 100.0, math.inf: 100.0}


def test_histogram_p95_as_prometheus_computes_it() -> None:
    snap = parse_vllm_metrics(BODY)
    # rank 95 of 100 lies in (0.5, 0.8] holding 50..100: 0.5 + 0.3 × 45/50
    assert histogram_quantile(0.95, snap.histograms["e2e"]) == pytest.approx(0.77)
    assert histogram_quantile(0.5, snap.histograms["e2e"]) == pytest.approx(0.5)  # rank 50 ends the second bucket
    assert histogram_quantile(0.05, snap.histograms["e2e"]) == pytest.approx(0.15)  # first bucket from 0
    assert histogram_quantile(0.95, snap.histograms["ttft"]) == pytest.approx(0.019)
    # a rank in +Inf answers the highest finite bound; no observations: None
    assert histogram_quantile(0.95, {1.0: 1.0, math.inf: 10.0}) == 1.0
    assert histogram_quantile(0.95, {1.0: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.95, {}) is None


def test_older_name_for_kv_usage_and_a_body_without_vllm_metrics() -> None:
    # vLLM 0.10 still serves the deprecated gpu_cache_usage_perc next to kv_cache_usage_perc
    old = parse_vllm_metrics('# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{engine="0"} 0.5\n')
    assert old.kv_cache_usage == 0.5
    assert parse_vllm_metrics("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.5\n") == MetricsSnapshot()
    with pytest.raises(ValueError):
        parse_vllm_metrics("<html>not prometheus</html>\n")


def test_summary_deltas_between_first_and_last_scrape() -> None:
    watch = MetricsWatch("http://127.0.0.1:9/metrics", 1.0)
    before = parse_vllm_metrics(BODY)
    after = parse_vllm_metrics(BODY.replace('le="+Inf",model_name="demo"} 60.0', 'le="+Inf",model_name="demo"} 80.0')
                               .replace('vllm:num_preemptions_total{engine="1",model_name="demo"} 2.0',
                                        'vllm:num_preemptions_total{engine="1",model_name="demo"} 6.0')
                               .replace('vllm:kv_cache_usage_perc{engine="1",model_name="demo"} 0.875',
                                        'vllm:kv_cache_usage_perc{engine="1",model_name="demo"} 0.25'))
    watch.first, watch.last, watch.snapshots = before, after, [before, after]

    s = watch.summary()

    # 20 new requests, all above 0.8 s: the p95 of the probe's window is the highest finite bound
    assert (s["preemptions"], s["kv_cache_usage_max"], s["requests_waiting_max"], s["e2e_p95_ms"]) == (4.0, 0.875, 7.0, 800.0)
    assert s["ttft_p95_ms"] is None  # nothing new in TTFT during the window
    assert (s["metrics_source"], s["metrics_scrapes"]) == ("scraped", 2)


def test_metrics_url_from_the_health_url_or_the_template() -> None:
    def canary(**keys: object) -> object:
        return parse_runner_settings({"canary": {"command": ["x", "{port}"], **keys}}).canary

    assert metrics_url(canary(), 8123) == "http://127.0.0.1:8123/metrics"
    assert metrics_url(canary(health_url="https://{host}:{port}/api/health", host="10.0.0.2"), 9) == "https://10.0.0.2:9/metrics"
    assert metrics_url(canary(health_url=None, ready_log_regex="ready"), 7) == "http://127.0.0.1:7/metrics"
    assert metrics_url(canary(metrics_url="http://{host}:9100/m?port={port}"), 7) == "http://127.0.0.1:9100/m?port=7"
