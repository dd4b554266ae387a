"""The probe against a real OpenAI-compatible server on 127.0.0.1 that answers as vLLM 0.33 does: chat when the
model has a chat template, fallback to completions when it has none, /metrics read before/during/after."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, default_settings
from healing.tuning.canary import run_canary, score_result
from healing.tuning.runner_config import parse_runner_settings

SETTINGS = default_settings()
VALUES = {GMU: Decimal("0.9"), MAX_NUM_SEQS: Decimal(16), MAX_MODEL_LEN: Decimal(4096)}

# A small vLLM stand-in: the routes, error body and metric names of vLLM 0.33 (exceptions.py,
# serve/exception_handling/error_response.py, v1/metrics/loggers.py and buckets.py), served by
# prometheus_client as vLLM does. Each completion: +1 preemption, e2e 0.4 s, TTFT 0.015 s, KV usage
# completions/10, 2 waiting. Flags: --no-chat-template, --no-metrics.
SERVER = r'''
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

port = int(sys.argv[1]); chat = "--no-chat-template" not in sys.argv; metrics = "--no-metrics" not in sys.argv
reg = CollectorRegistry()
labels = ["model_name", "engine"]
kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=reg).labels("demo-model", "0")
waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, registry=reg).labels("demo-model", "0")
running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", labels, registry=reg).labels("demo-model", "0")
preempt = Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels, registry=reg).labels("demo-model", "0")
e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels, registry=reg,
                buckets=[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0]).labels("demo-model", "0")
ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels, registry=reg,
                 buckets=[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1]).labels("demo-model", "0")
lock = threading.Lock(); done = [0]
NO_TEMPLATE = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
               "template if the tokenizer does not define one.")

class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code); self.send_header("Content-Type", ctype); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        if self.path == "/health": return self.send(200, b"", "text/plain")
        if self.path == "/v1/models": return self.send(200, {"object": "list", "data": [{"id": "demo-model", "object": "model"}]})
        if self.path == "/metrics" and metrics: return self.send(200, generate_latest(reg), "text/plain; version=0.0.4")
        self.send(404, {"detail": "Not Found"})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        line = f"REQ {self.path} {body.get('model')} {'messages' in body}\n"
        sys.stdout.write(line); sys.stdout.flush()  # one write: print() writes its pieces apart, threads interleave them
        if self.path == "/v1/chat/completions" and not chat:
            return self.send(400, {"error": {"message": NO_TEMPLATE, "type": "BadRequestError", "param": None, "code": 400}})
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self.send(404, {"detail": "Not Found"})
        with lock:
            done[0] += 1; kv.set(done[0] / 10); waiting.set(2); running.set(1); preempt.inc(); e2e.observe(0.4); ttft.observe(0.015)
        n = body["max_tokens"]
        self.send(200, {"object": "chat.completion" if "messages" in body else "text_completion",
                        "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}})

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _canary(tmp_path: Path, *flags: str, api: str = "auto", requests: int = 4) -> object:
    script = tmp_path / "vllm_like.py"
    script.write_text(SERVER)
    return parse_runner_settings({"canary": {
        "command": ["{python}", str(script), "{port}", *flags], "start_timeout_s": 20, "stop_grace_s": 2,
        "metrics_interval_s": 0.05, "probe": {"requests": requests, "concurrency": 2, "max_tokens": 8, "api": api}}}).canary


def _requests(log_path: str) -> list[str]:
    return [line for line in Path(log_path).read_text().splitlines() if line.startswith("REQ ")]


def test_no_chat_template_falls_back_to_completions_and_reads_metrics(tmp_path: Path) -> None:
    result = run_canary(_canary(tmp_path, "--no-chat-template"), VALUES, SETTINGS, tmp_path / "logs", "nochat")

    assert result.passed, result.reason
    m = result.metrics
    assert m["api"] == "completions" and m["model"] == "demo-model"
    assert m["api_reason"].startswith("no chat template (As of transformers v4.44, default chat template is no longer allowed")
    # one chat attempt, then the whole load through /v1/completions with the served model name
    assert _requests(result.log_path) == ["REQ /v1/chat/completions demo-model True"] + ["REQ /v1/completions demo-model False"] * 4
    assert (m["errors"], m["error_rate"], m["requests"]) == (0, 0.0, 4)
    # /metrics: 4 completions during the probe → +4 preemptions, KV usage 4/10 at most, 2 waiting
    assert (m["metrics_source"], m["preemptions"], m["kv_cache_usage_max"], m["requests_waiting_max"]) == ("scraped", 4.0, 0.4, 2.0)
    assert m["requests_running_max"] == 1.0 and m["metrics_scrapes"] >= 2
    # 4 observations of 0.4 s in (0.3, 0.5]: p95 = 0.3 + 0.2 × 3.8/4; TTFT 0.015 s in (0.01, 0.02]
    assert (m["e2e_p95_ms"], m["ttft_p95_ms"]) == (pytest.approx(490.0), pytest.approx(19.5))

    score, breakdown, verdict = score_result(result, None, parse_runner_settings({}).scoring)
    per = breakdown["per_metric"]
    assert (per["preemptions"]["value"], per["preemptions"]["classification"]) == (4.0, "high")  # target 0
    assert (per["kv_cache_usage"]["value"], per["kv_cache_usage"]["classification"]) == (0.4, "pass")  # ≤ 0.9
    assert (per["requests_waiting"]["value"], per["requests_waiting"]["classification"]) == (2.0, "high")  # > 1
    assert breakdown["no_data"] == [] and len(breakdown["judged"]) == 6
    assert (score, verdict) == (round(4 / 6, 4), "inconclusive")


def test_chat_model_is_probed_through_chat_completions(tmp_path: Path) -> None:
    result = run_canary(_canary(tmp_path), VALUES, SETTINGS, tmp_path / "logs", "chat")

    assert result.passed, result.reason
    assert (result.metrics["api"], result.metrics["api_reason"]) == ("chat", "/v1/chat/completions answered 200: chat")
    assert _requests(result.log_path) == ["REQ /v1/chat/completions demo-model True"] * 5
    assert result.metrics["throughput_tps"] > 0


def test_forced_api_and_a_service_without_metrics(tmp_path: Path) -> None:
    result = run_canary(_canary(tmp_path, "--no-metrics", api="completions", requests=2), VALUES, SETTINGS, tmp_path / "l", "old")

    assert result.passed, result.reason
    m = result.metrics
    assert (m["api"], m["api_reason"]) == ("completions", "probe.api is completions")
    assert _requests(result.log_path) == ["REQ /v1/completions demo-model False"] * 2
    # no /metrics: no data, not a failure
    assert m["metrics_source"].endswith("/metrics answered 404") and m["metrics_scrapes"] == 0
    assert (m["kv_cache_usage_max"], m["preemptions"], m["requests_waiting_max"], m["e2e_p95_ms"]) == (None, None, None, None)
    _score, breakdown, _verdict = score_result(result, None, parse_runner_settings({}).scoring)
    assert breakdown["no_data"] == ["kv_cache_usage", "preemptions", "requests_waiting"]

    forced_chat = run_canary(_canary(tmp_path, "--no-chat-template", api="chat", requests=2), VALUES, SETTINGS, tmp_path / "c", "c")
    # told to use chat on a model without a template: every request fails, the probe gate fails
    assert forced_chat.gates["probe_passed"] is False and forced_chat.metrics["errors"] == 2
