"""The simulator's endpoints over real HTTP on 127.0.0.1: vLLM 0.33's shapes, /metrics that react to load, and an
engine that dies after it came up (--sim-fail-after): /health 503, requests 500, exit after the watchdog."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from healing.tuning.observer import observe_text
from tests.conftest import subprocess_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    log = tmp_path / "sim.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "healing.tuning.simulator", "--host", "127.0.0.1", "--port",
                                 str(port), "--startup-delay", "0.1", *flags],
                                stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base, log
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the simulator did not become healthy"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _samples(text: str) -> dict[str, float]:
    """name{sorted labels} → value, for the samples of the engine's metrics."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("model_name", "engine"))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


@pytest.mark.timeout(90)
def test_endpoints_in_vllm_033_shapes_and_metrics_under_load(tmp_path: Path) -> None:
    # 12 blocks of 16 tokens (one is vLLM's null block): six requests of ~104 tokens cannot all stay resident
    proc, base, log = _start(tmp_path, "org/model-7b", "--served-model-name", "alpha", "beta", "--max-model-len", "128",
                             "--kv-cache-memory-bytes", str(12 * 16 * 28672), "--stats-interval", "0.2")
    try:
        with httpx.Client(timeout=30) as client:
            health = client.get(f"{base}/health")
            assert (health.status_code, health.content) == (200, b"")
            assert client.get(f"{base}/version").json() == {"version": "0.33.0"}
            models = client.get(f"{base}/v1/models").json()
            assert [(m["id"], m["root"], m["max_model_len"], m["owned_by"]) for m in models["data"]] == [
                ("alpha", "org/model-7b", 128, "vllm"), ("beta", "org/model-7b", 128, "vllm")]

            metrics = client.get(f"{base}/metrics")
            assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            before = _samples(metrics.text)
            assert before["vllm:kv_cache_usage_perc{}"] == 0.0 and before["vllm:num_preemptions_total{}"] == 0.0
            assert before["vllm:num_requests_waiting{}"] == 0.0 and before["vllm:num_requests_running{}"] == 0.0
            assert before["vllm:e2e_request_latency_seconds_count{}"] == 0.0
            assert before["vllm:cache_config_info{block_size=16,cache_dtype=auto,gpu_memory_utilization=0.92,"
                          "kv_cache_memory_bytes=5505024,num_gpu_blocks=12}"] == 1.0
            [family] = [f for f in text_string_to_metric_families(metrics.text) if f.name == "vllm:num_preemptions"]
            assert family.type == "counter" and family.samples[0].labels == {"model_name": "alpha", "engine": "0"}

            text = client.post(f"{base}/v1/completions", json={"model": "beta", "prompt": "the canary says hi",
                                                               "max_tokens": 5}).json()
            assert (text["object"], text["model"], text["usage"]) == (
                "text_completion", "beta", {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9})
            assert len(text["choices"][0]["text"].split()) == 5 and text["choices"][0]["finish_reason"] == "length"
            chat = client.post(f"{base}/v1/chat/completions", json={
                "model": "alpha", "messages": [{"role": "user", "content": "say three words"}], "max_tokens": 3}).json()
            assert (chat["object"], chat["model"], chat["usage"]["completion_tokens"]) == ("chat.completion", "alpha", 3)
            assert chat["choices"][0]["message"]["role"] == "assistant" and len(chat["choices"][0]["message"]["content"].split()) == 3
            streamed = client.post(f"{base}/v1/chat/completions", json={
                "model": "alpha", "messages": [{"role": "user", "content": "say three words"}], "max_tokens": 3,
                "stream": True, "stream_options": {"include_usage": True}})
            assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
            frames = [f.removeprefix("data: ") for f in streamed.text.split("\n\n") if f]
            assert frames[-1] == "[DONE]" and len(frames) == 6  # role, three words, usage, [DONE]
            chunks = [json.loads(f) for f in frames[:-1]]
            assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:4]) == \
                chat["choices"][0]["message"]["content"]
            assert [c["choices"][0]["finish_reason"] for c in chunks[1:4]] == [None, None, "length"]
            assert chunks[4] == {**{k: chunks[0][k] for k in ("id", "object", "created", "model")}, "choices": [],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
            missing = client.post(f"{base}/v1/completions", json={"model": "gamma", "prompt": "x"})
            assert missing.status_code == 404 and missing.json() == {"error": {
                "message": "The model `gamma` does not exist.", "type": "NotFoundError", "param": None, "code": 404}}
            too_long = client.post(f"{base}/v1/completions", json={"model": "alpha", "prompt": "x", "max_tokens": 200})
            assert too_long.status_code == 400 and "maximum context length is 128 tokens" in too_long.json()["error"]["message"]

            def one(i: int) -> int:
                return client.post(f"{base}/v1/completions", json={
                    "model": "alpha", "prompt": f"request number {i} here", "max_tokens": 100}).status_code

            peak_waiting = peak_usage = 0.0
            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(one, i) for i in range(6)]
                while not all(f.done() for f in futures):
                    now = _samples(client.get(f"{base}/metrics").text)
                    peak_waiting = max(peak_waiting, now["vllm:num_requests_waiting{}"])
                    peak_usage = max(peak_usage, now["vllm:kv_cache_usage_perc{}"])
                    time.sleep(0.01)
                assert [f.result() for f in futures] == [200] * 6
            after = _samples(client.get(f"{base}/metrics").text)
    finally:
        _stop(proc)
    assert peak_waiting >= 1 and 0.5 < peak_usage <= 1.0
    assert after["vllm:num_preemptions_total{}"] >= 1
    assert after["vllm:e2e_request_latency_seconds_count{}"] == 9.0  # 6 + the completion and the two chats above
    assert after["vllm:request_success_total{finished_reason=length}"] == 9.0
    assert after["vllm:generation_tokens_total{}"] == 611  # 600 + 5 + 3 + 3: a preempted request keeps its tokens
    assert after["vllm:e2e_request_latency_seconds_sum{}"] > after["vllm:time_to_first_token_seconds_sum{}"] > 0
    assert after["vllm:num_requests_waiting{}"] == 0.0 and after["vllm:kv_cache_usage_perc{}"] == 0.0
    text = log.read_text()
    assert "Starting vLLM server on http://127.0.0.1:" in text and "Preemptions: " in text
    # a loaded but healthy server: at most the Observer's soft KV-pressure event, never a memory failure
    assert {e.event_class for e in observe_text(text)} <= {"kv_cache_preemption"}


@pytest.mark.timeout(60)
def test_the_engine_dies_after_serving_then_health_503_requests_500_and_exit(tmp_path: Path) -> None:
    proc, base, log = _start(tmp_path, "--max-model-len", "4096", "--sim-fail-after", "0.5",
                             "--sim-watchdog-interval", "30")
    try:
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/health", timeout=2).status_code == 200:
            assert time.monotonic() < deadline, "the engine did not die"
            time.sleep(0.05)
        dead = httpx.get(f"{base}/health", timeout=2)
        assert (dead.status_code, dead.content) == (503, b"")
        failed = httpx.post(f"{base}/v1/completions", json={"prompt": "hello", "max_tokens": 4}, timeout=5)
        assert failed.status_code == 500 and failed.json() == {"error": {
            "message": "The server had an error while processing your request.", "type": "InternalServerError",
            "param": None, "code": 500}}
        # the failed request stops the API server at once (vLLM's terminate_if_errored), not after the watchdog
        assert proc.wait(timeout=10) == 0
    finally:
        _stop(proc)
    text = log.read_text()
    assert "[core.py:1586] EngineCore encountered a fatal error." in text
    assert "[async_llm.py:943] AsyncLLM output_handler failed." in text
    assert "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the " \
           "root cause." in text
    [event] = observe_text(text)
    assert event.event_class == "cuda_oom_torch" and event.values["tried_gib"] == 2.4 and event.values["total_gib"] == 22.05


@pytest.mark.timeout(60)
def test_without_requests_the_watchdog_stops_the_dead_server(tmp_path: Path) -> None:
    proc, base, _log = _start(tmp_path, "--max-model-len", "4096", "--sim-fail-after", "0.3",
                              "--sim-watchdog-interval", "1.5", "--log-format", "0.20")
    try:
        started = time.monotonic()
        while httpx.get(f"{base}/health", timeout=2).status_code == 200:
            time.sleep(0.05)
        died = time.monotonic()
        assert httpx.get(f"{base}/health", timeout=2).status_code == 503
        assert proc.wait(timeout=10) == 0
        assert 1.2 < time.monotonic() - died < 5 and died - started < 3
    finally:
        _stop(proc)


HEALTHY_LINES = {
    "0.33": ["] GPU KV cache size: 586,672 tokens, Maximum concurrency for 4,096 tokens per request: 143.23x",
             "(EngineCore pid=", "] Starting vLLM server on http://127.0.0.1:", "  version 0.33.0",
             "] Available KV cache memory: 15.67 GiB", "] Estimated CUDA graph memory: 0.43 GiB total",
             "The current --gpu-memory-utilization=0.9200 is equivalent to --gpu-memory-utilization=0.9005 without "
             "CUDA graph memory profiling.", "[launcher.py:256] [shutdown] API server: shutdown triggered",
             "[launcher.py:306] [shutdown] API server: shutting down FastAPI HTTP server"],
    "0.20": ["] GPU KV cache size: 586,672 tokens\n", "] Maximum concurrency for 4,096 tokens per request: 143.23x",
             "(EngineCore pid=", "] Starting vLLM server on http://127.0.0.1:", "  version 0.20.0"],
    "0.10": ["] GPU KV cache size: 586,256 tokens", "(EngineCore_DP0 pid=", "] Starting vLLM API server 0 on http://127.0.0.1:",
             "] vLLM API server version 0.10.2", "] Available KV cache memory: 15.66 GiB"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", sorted(HEALTHY_LINES))
def test_a_healthy_start_in_each_format_has_no_failure_for_the_observer(fmt: str, tmp_path: Path) -> None:
    proc, _base, log = _start(tmp_path, "--max-model-len", "4096", "--log-format", fmt)
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    text = log.read_text()
    for line in HEALTHY_LINES[fmt]:
        assert line in text, line
    assert observe_text(text) == []


@pytest.mark.timeout(60)
def test_the_banner_without_logo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_DISABLE_LOG_LOGO", "1")
    res = subprocess.run([sys.executable, "-m", "healing.tuning.simulator", "org/m", "--profile", "seed",
                          "--gpu-memory-utilization", "0.6", "--startup-delay", "0"],
                         capture_output=True, text=True, env=subprocess_env(), timeout=30)
    assert res.returncode == 1
    assert "[startup.py:38] vLLM server version 0.33.0, serving model org/m\n" in res.stdout and "█" not in res.stdout
    [event] = observe_text(res.stdout + res.stderr)
    assert (event.event_class, event.version) == ("startup_free_memory_below_request", "0.33.0")


@pytest.mark.timeout(60)
def test_max_model_len_auto_fits_the_kv_cache_and_serves_it(tmp_path: Path) -> None:
    proc, base, log = _start(tmp_path, "demo", "--profile", "tight", "--max-model-len", "auto", "--max-num-seqs", "16")
    try:
        [card] = httpx.get(f"{base}/v1/models", timeout=5).json()["data"]
        assert (card["id"], card["max_model_len"]) == ("demo", 3984)
    finally:
        _stop(proc)
    text = log.read_text()
    assert "] Using max model len 32768\n" in text and "'max_model_len': -1" in text
    assert ("] Auto-fit max_model_len: reduced from 32768 to 3984 to fit in available KV cache memory (0.49 GiB GPU)\n"
            in text)
    assert "] GPU KV cache size: 4,000 tokens, Maximum concurrency for 3,984 tokens per request: 1.00x\n" in text
