"""The serving half of the vLLM simulator: a scheduler over the modelled KV cache, vLLM's HTTP endpoints and
its Prometheus metrics.

The engine is a small model of vLLM V1's scheduler, stepped every ``token_latency_s`` of the profile: each
running request grows by one token per step and holds ``ceil(tokens / block_size)`` KV blocks; waiting
requests are admitted first-come-first-served while fewer than max_num_seqs run, the step's token budget
(max_num_batched_tokens) lasts and their blocks are free; a running request that cannot grow preempts the
most recently admitted one (recompute: its blocks are freed and it waits again, first in line). So
concurrency above what the KV cache holds makes requests wait, raises KV usage, causes preemptions and
stretches latency — which ``/metrics`` reports under vLLM 0.33's names (vllm/v1/metrics/loggers.py).

Endpoints: ``GET /health`` (200, empty body; 503 once the engine died), ``/v1/models`` (every served name),
``/version``, ``/metrics``; ``POST /v1/completions`` and ``/v1/chat/completions`` (OpenAI shapes, tiny
deterministic text; ``"stream": true`` answers server-sent events, sent whole when the request finished).
``--sim-fail-after`` kills the engine with a CUDA OOM as vLLM 0.33 reports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from healing.tuning.simulator import GpuProfile, MemoryPlan, VllmLog

# vllm/v1/metrics/buckets.py (0.33.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)
TIME_TO_FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                               10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                               20.0, 40.0, 80.0)
ENGINE_DEAD_CLIENT_MESSAGE = "The server had an error while processing your request."
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def _buckets_1_2_5(max_value: int) -> list[float]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50 … up to max_value."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10**exponent
            if value > max_value:
                return out
            out.append(float(value))
        exponent += 1


@dataclass(frozen=True)
class EventStream:
    """A streamed answer ("stream": true): OpenAI's server-sent events, sent whole once the request finished."""

    events: list[dict[str, Any]]

    def body(self) -> bytes:
        return "".join(f"data: {json.dumps(e)}\n\n" for e in self.events).encode() + b"data: [DONE]\n\n"


class EngineDead(Exception):
    """The simulated EngineCore died; requests answer 500."""


@dataclass
class _Request:
    prompt_tokens: int
    max_tokens: int
    arrival: float
    generated: int = 0
    blocks: int = 0
    scheduled: float | None = None  # first admission
    first_token: float | None = None
    last_token: float | None = None
    preemptions: int = 0
    finished: float | None = None
    error: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class Metrics:
    """vLLM 0.33's Prometheus metrics (names, labels model_name/engine, buckets) in a private registry."""

    def __init__(self, plan: MemoryPlan, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        labels = ["model_name", "engine"]
        values = (model_name, "0")
        reg = self.registry

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, registry=reg).labels(*values)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets: Any) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               labels + ["finished_reason"], registry=reg)
        for reason in ("stop", "length", "abort", "error"):
            self.success.labels(*values, reason)
        tokens = _buckets_1_2_5(plan.max_model_len)
        self.req_prompt = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.req_generation = histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", tokens)
        self.req_max_tokens = histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                                        tokens)
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TIME_TO_FIRST_TOKEN_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             INTER_TOKEN_LATENCY_BUCKETS)
        self.tpot = histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", INTER_TOKEN_LATENCY_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue = histogram("vllm:request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.", REQUEST_LATENCY_BUCKETS)
        self.inference = histogram("vllm:request_inference_time_seconds",
                                   "Histogram of time spent in RUNNING phase for request.", REQUEST_LATENCY_BUCKETS)
        self.prefill = histogram("vllm:request_prefill_time_seconds",
                                 "Histogram of time spent in PREFILL phase for request.", REQUEST_LATENCY_BUCKETS)
        self.decode = histogram("vllm:request_decode_time_seconds",
                                "Histogram of time spent in DECODE phase for request.", REQUEST_LATENCY_BUCKETS)
        info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                     ["block_size", "cache_dtype", "gpu_memory_utilization", "kv_cache_memory_bytes", "num_gpu_blocks",
                      "engine"], registry=reg)
        info.labels(str(plan.block_size), "auto", str(float(plan.gpu_memory_utilization)),
                    str(plan.kv_available_bytes) if plan.kv_from_flag else "None", str(plan.num_gpu_blocks), "0").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Engine:
    """The simulated EngineCore: a stepped scheduler over the plan's KV blocks."""

    def __init__(self, plan: MemoryPlan, profile: GpuProfile, metrics: Metrics) -> None:
        self.plan, self.metrics = plan, metrics
        self.block_size = plan.block_size
        self.total_blocks = max(plan.num_gpu_blocks - (1 if plan.log_format == "0.33" else 0), 1)  # the null block
        self.step_s = max(profile.token_latency_s, 0.0005)
        self.free_blocks = self.total_blocks
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.dead = False
        # cumulative figures for the stats log line
        self.prompt_total = 0
        self.generation_total = 0
        self.preemptions_total = 0
        self._thread = threading.Thread(target=self._loop, name="engine-core", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def die(self) -> None:
        """The engine is gone: every request in flight fails."""
        with self.cond:
            self.dead = True
            for req in list(self.waiting) + self.running:
                req.error = True
                req.done.set()
            self.waiting.clear()
            self.running.clear()
            self.free_blocks = self.total_blocks
            self._publish()
            self.cond.notify_all()

    def submit(self, prompt_tokens: int, max_tokens: int) -> _Request:
        """Queue a request and wait for it to finish; raises EngineDead when the engine dies first."""
        req = _Request(prompt_tokens, max_tokens, time.monotonic())
        with self.cond:
            if self.dead:
                raise EngineDead
            self.waiting.append(req)
            self.metrics.req_max_tokens.observe(max_tokens)
            self._admit(self.plan.max_num_batched_tokens)  # free capacity takes it at once: waiting means no room
            self._publish()
            self.cond.notify_all()
        req.done.wait()
        if req.error:
            raise EngineDead
        return req

    def snapshot(self) -> tuple[int, int, float, int, int, int]:
        with self.cond:
            used = self.total_blocks - self.free_blocks
            return (len(self.running), len(self.waiting), used / self.total_blocks, self.prompt_total,
                    self.generation_total, self.preemptions_total)

    # -- the scheduler
    def _blocks(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def _preempt(self, victim: _Request) -> None:
        self.running.remove(victim)
        self.free_blocks += victim.blocks
        victim.blocks = 0
        victim.preemptions += 1
        self.waiting.appendleft(victim)
        self.preemptions_total += 1
        self.metrics.preemptions.inc()

    def _schedule(self) -> None:
        budget = self.plan.max_num_batched_tokens
        for req in list(self.running):
            if req not in self.running:
                continue  # preempted by an earlier request of this step
            need = self._blocks(req.prompt_tokens + req.generated + 1) - req.blocks
            while need > self.free_blocks and req in self.running:
                self._preempt(self.running[-1])
            if req not in self.running:
                continue
            self.free_blocks -= max(need, 0)
            req.blocks += max(need, 0)
            budget -= 1
        self._admit(budget)

    def _admit(self, budget: int) -> None:
        now = time.monotonic()
        while self.waiting and len(self.running) < self.plan.max_num_seqs and budget > 0:
            req = self.waiting[0]
            need = self._blocks(req.prompt_tokens + req.generated + 1)
            if need > self.free_blocks:
                break
            self.waiting.popleft()
            self.free_blocks -= need
            req.blocks = need
            if req.scheduled is None:
                req.scheduled = now
            self.running.append(req)
            budget -= req.prompt_tokens + req.generated

    def _advance(self) -> None:
        now = time.monotonic()
        for req in list(self.running):
            if req.generated == 0 or req.first_token is None:
                self.prompt_total += req.prompt_tokens
                self.metrics.prompt_tokens.inc(req.prompt_tokens)
            req.generated += 1
            self.generation_total += 1
            self.metrics.generation_tokens.inc()
            if req.first_token is None:
                req.first_token = now
                self.metrics.ttft.observe(now - req.arrival)
            elif req.last_token is not None:
                self.metrics.itl.observe(now - req.last_token)
            req.last_token = now
            if req.generated >= req.max_tokens:
                self._finish(req, now)

    def _finish(self, req: _Request, now: float) -> None:
        self.running.remove(req)
        self.free_blocks += req.blocks
        req.blocks = 0
        req.finished = now
        m = self.metrics
        scheduled = req.scheduled if req.scheduled is not None else now
        first = req.first_token if req.first_token is not None else now
        m.e2e.observe(now - req.arrival)
        m.queue.observe(scheduled - req.arrival)
        m.inference.observe(now - scheduled)
        m.prefill.observe(first - scheduled)
        m.decode.observe(now - first)
        if req.generated > 1:
            m.tpot.observe((now - first) / (req.generated - 1))
        m.req_prompt.observe(req.prompt_tokens)
        m.req_generation.observe(req.generated)
        m.success.labels(m.model_name, "0", "length").inc()
        req.done.set()

    def _publish(self) -> None:
        self.metrics.running.set(len(self.running))
        self.metrics.waiting.set(len(self.waiting))
        self.metrics.kv_usage.set((self.total_blocks - self.free_blocks) / self.total_blocks)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.stopped or self.dead) and not self.running and not self.waiting:
                    self.cond.wait(0.5)
                if self.stopped or self.dead:
                    return
                self._schedule()
                self._publish()
            time.sleep(self.step_s)
            with self.cond:
                if self.dead or self.stopped:
                    return
                self._advance()
                self._publish()


_WORDS = ("the", "cache", "model", "token", "memory", "server", "request", "block", "engine", "heals",
          "bounded", "canary", "fix", "grid", "step", "safe")


def deterministic_text(prompt: str, n: int) -> str:
    seed = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    return " " + " ".join(_WORDS[seed[i % len(seed)] % len(_WORDS)] for i in range(n))


class SimulatedServer:
    """The healthy simulator: HTTP endpoints, the engine, stats lines, the optional engine death."""

    def __init__(self, args: argparse.Namespace, profile: GpuProfile, plan: MemoryPlan, log: VllmLog,
                 sock: Any = None) -> None:
        self.args, self.profile, self.plan, self.log, self.sock = args, profile, plan, log, sock
        self.fmt = plan.log_format
        self.names = list(args.served_model_name) if args.served_model_name else [args.model_name]
        self.model = self.names[0]
        self.metrics = Metrics(plan, self.model)
        self.engine = Engine(plan, profile, self.metrics)
        self._stop = threading.Event()
        self._terminating = False
        self.httpd: ThreadingHTTPServer | None = None

    # -- requests
    def _error(self, message: str, kind: str, code: int) -> dict[str, Any]:
        if self.fmt == "0.10":
            return {"object": "error", "message": message, "type": kind, "param": None, "code": code}
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def generate(self, body: dict[str, Any], chat: bool) -> tuple[int, dict[str, Any] | EventStream]:
        model = body.get("model", self.model)
        if model not in self.names:
            return 404, self._error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                return 400, self._error("messages must be a non-empty list of objects", "BadRequestError", 400)
            prompt = " ".join(str(m.get("content", "")) for m in messages)
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list):
                prompt = " ".join(str(p) for p in prompt)
            if not isinstance(prompt, str):
                return 400, self._error("prompt must be a string or a list of strings", "BadRequestError", 400)
        key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        try:
            max_tokens = int(body.get(key) if body.get(key) is not None else 16)
        except (TypeError, ValueError):
            return 400, self._error(f"{key} must be an integer", "BadRequestError", 400)
        if max_tokens < 1:
            return 400, self._error(f"{key} must be at least 1", "BadRequestError", 400)
        prompt_tokens = max(1, len(prompt.split()))
        mml = self.plan.max_model_len
        if prompt_tokens + max_tokens > mml:
            return 400, self._error(f"This model's maximum context length is {mml} tokens. However, you requested "
                                    f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} "
                                    f"in the completion). Please reduce the length of the messages or completion.",
                                    "BadRequestError", 400)
        try:
            self.engine.submit(prompt_tokens, max_tokens)
        except EngineDead:
            return 500, self._error(ENGINE_DEAD_CLIENT_MESSAGE, "InternalServerError", 500)
        text = deterministic_text(prompt, max_tokens)
        digest = hashlib.sha256(f"{prompt}|{max_tokens}|{time.monotonic_ns()}".encode()).hexdigest()[:32]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens}
        if body.get("stream") is True:
            return 200, self._stream(chat, f"chatcmpl-{digest}" if chat else f"cmpl-{digest}", model, text,
                                     usage if (body.get("stream_options") or {}).get("include_usage") else None)
        if chat:
            return 200, {
                "id": f"chatcmpl-{digest}", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text.lstrip(), "refusal": None,
                                                     "tool_calls": []},
                             "logprobs": None, "finish_reason": "length", "stop_reason": None}],
                "usage": usage}
        return 200, {
            "id": f"cmpl-{digest}", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}],
            "usage": usage}

    @staticmethod
    def _stream(chat: bool, rid: str, model: str, text: str, usage: dict[str, int] | None) -> EventStream:
        created = int(time.time())
        words = text.split()
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": model}
        events: list[dict[str, Any]] = []
        if chat:
            events.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]})
        for i, word in enumerate(words):
            last = i == len(words) - 1
            piece = word if chat and i == 0 else " " + word
            choice: dict[str, Any] = ({"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece})
            choice.update({"logprobs": None, "finish_reason": "length" if last else None,
                           "stop_reason": None})
            events.append({**head, "choices": [choice]})
        if usage is not None:
            events.append({**head, "choices": [], "usage": usage})
        return EventStream(events)

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": self.args.model_name, "parent": None, "max_model_len": self.plan.max_model_len,
            **({} if self.fmt == "0.10" else {"permission": []})} for name in self.names]}

    # -- lifecycle
    def serve(self) -> int:
        handler = _make_handler(self)
        try:
            if self.sock is not None:
                self.httpd = ThreadingHTTPServer(self.sock.getsockname()[:2], handler, bind_and_activate=False)
                self.httpd.socket.close()
                self.httpd.socket = self.sock
                self.httpd.server_address = self.sock.getsockname()[:2]
                self.httpd.server_activate()
            else:
                self.httpd = ThreadingHTTPServer((self.args.host, self.args.port), handler)
        except OSError as exc:  # the 0.10 format binds here (0.20+ bound before the engine started)
            from healing.tuning.simulator import _traceback

            self.log.raw("APIServer", _traceback([("entrypoints/openai/api_server.py", 1921, "run_server",
                                                   "sock = create_server_socket(sock_addr)")],
                                                 f"OSError: [Errno {exc.errno}] {exc.strerror}"))
            return 1
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self._announce(str(host), int(port))
        self.engine.start()
        threading.Thread(target=self._stats_loop, name="stats", daemon=True).start()
        if self.args.sim_fail_after is not None:
            threading.Thread(target=self._fail_later, name="sim-fail", daemon=True).start()
        self.httpd.serve_forever(poll_interval=0.1)
        self._stop.set()
        self.engine.stop()
        self.httpd.server_close()
        self._goodbye()
        return 0  # SIGTERM, or the engine died: vLLM's serve returns normally once uvicorn stops

    def _announce(self, host: str, port: int) -> None:
        log, api = self.log, "APIServer"
        routes = [("/health", "GET"), ("/v1/models", "GET"), ("/version", "GET"), ("/metrics", "GET"),
                  ("/v1/completions", "POST"), ("/v1/chat/completions", "POST")]
        if self.fmt == "0.10":
            log.log(api, "INFO", "entrypoints/openai/api_server.py:1971", f"Starting vLLM API server 0 on http://{host}:{port}")
            for route in ("/health", "/v1/models", "/v1/completions"):
                log.log(api, "INFO", "entrypoints/launcher.py:37", f"Route: {route}, Methods: {'POST' if 'completions' in route else 'GET'}")
        else:
            from healing.tuning.simulator import _where

            shown = host if self.args.host else "0.0.0.0"
            log.log(api, "INFO", _where(self.fmt, "tasks"), "Supported tasks: ['generate']")
            log.log(api, "INFO", _where(self.fmt, "serving"), f"Starting vLLM server on http://{shown}:{port}")
            for route, method in routes:
                log.log(api, "INFO", _where(self.fmt, "route"), f"Route: {route}, Methods: {method}")
        log.raw(api, f"INFO:     Started server process [{log.pid}]", log.out)
        log.raw(api, "INFO:     Waiting for application startup.", log.out)
        log.raw(api, "INFO:     Application startup complete.", log.out)

    def _goodbye(self) -> None:
        log, api = self.log, "APIServer"
        if self.fmt == "0.10":
            log.log(api, "INFO", "entrypoints/launcher.py:101", "Shutting down FastAPI HTTP server.")
        else:
            from healing.tuning.simulator import _where

            log.log(api, "INFO", _where(self.fmt, "shutdown"), "[shutdown] API server: shutting down FastAPI HTTP server")
        log.raw(api, "INFO:     Shutting down", log.out)
        log.raw(api, "INFO:     Waiting for application shutdown.", log.out)
        log.raw(api, "INFO:     Application shutdown complete.", log.out)
        if self.fmt != "0.10":
            log.raw(api, f"INFO:     Finished server process [{log.pid}]", log.out)

    def terminate(self) -> None:
        """SIGTERM/SIGINT: vLLM 0.33's API server logs its shutdown steps (launcher.py serve_http)."""
        if self.fmt != "0.10" and not self._terminating:
            from healing.tuning.simulator import _where

            self._terminating = True
            for line, message in ((256, "[shutdown] API server: shutdown triggered"),
                                  (273, "[shutdown] API server: stopping engine client mode=abort timeout=0s"),
                                  (281, "[shutdown] API server: engine client stopped"),
                                  (284, "[shutdown] API server: signalling HTTP server shutdown")):
                self.log.log("APIServer", "INFO", f"{_where(self.fmt, 'shutdown').split(':')[0]}:{line}", message)
        self.shutdown()

    def shutdown(self) -> None:
        if self.httpd is not None:
            threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    # -- the engine's death (--sim-fail-after)
    def _fail_later(self) -> None:
        if self._stop.wait(self.args.sim_fail_after):
            return
        self.engine.die()
        self._print_engine_death()
        # vLLM's API server watchdog (VLLM_WATCHDOG_TIME_S) stops uvicorn once the engine errored
        if not self._stop.wait(self.args.sim_watchdog_interval):
            self.shutdown()

    def _print_engine_death(self) -> None:
        from healing.tuning.simulator import _bytes, _traceback, _where, torch_oom

        plan, profile, log = self.plan, self.profile, self.log
        burst = 2 * _bytes(profile.activation_peak_gib)
        in_use = plan.weights_bytes + _bytes(profile.non_torch_gib) + plan.num_gpu_blocks * plan.bytes_per_block + plan.graph_bytes
        oom = torch_oom(burst, plan.total_bytes, plan.headroom_bytes, in_use)
        core = "EngineCore" if self.fmt != "0.10" else "EngineCore_DP0"
        frames = [("v1/engine/core.py", 1570, "run_engine_core", "engine_core.run_busy_loop()"),
                  ("v1/engine/core.py", 1629, "run_busy_loop", "self._process_engine_step()"),
                  ("v1/engine/core.py", 1683, "_process_engine_step", "outputs, model_executed = self.step_fn()"),
                  ("v1/engine/core.py", 684, "step", "model_output = future.result()"),
                  ("v1/executor/uniproc_executor.py", 119, "execute_model", "output = self.collective_rpc("),
                  ("v1/worker/gpu_worker.py", 1334, "execute_model", "output = self.model_runner.execute_model("),
                  ("v1/worker/gpu_model_runner.py", 3906, "execute_model", "model_output = self._model_forward("),
                  ("model_executor/layers/activation.py", 141, "forward_cuda", "out = torch.empty(output_shape, "
                                                                                  "dtype=x.dtype, device=x.device)")]
        text = _traceback(frames, oom)
        fatal = _where(self.fmt, "fatal") if self.fmt != "0.10" else "v1/engine/core.py:720"
        log.log(core, "ERROR", fatal, "EngineCore encountered a fatal error.\n" + text)
        log.raw(core, f"Process {core}:\n" + text)
        handler = _where(self.fmt, "output_handler") if self.fmt != "0.10" else "v1/engine/async_llm.py:480"
        log.log("APIServer", "ERROR", handler, "AsyncLLM output_handler failed.\n" + _traceback(
            [("v1/engine/async_llm.py", 898, "output_handler", "outputs = await engine_core.get_output_async()"),
             ("v1/engine/core_client.py", 1063, "get_output_async", "raise self._format_exception(outputs) from None")],
            f"vllm.v1.engine.exceptions.EngineDeadError: {ENGINE_DEAD_MESSAGE}"))

    # -- stats lines
    def _stats_loop(self) -> None:
        from healing.tuning.simulator import _where

        interval = self.args.stats_interval
        last_p = last_g = last_pre = 0
        last_t = time.monotonic()
        while not self._stop.wait(interval):
            if self.engine.dead:
                return
            running, waiting, usage, p, g, pre = self.engine.snapshot()
            now = time.monotonic()
            span = max(now - last_t, 1e-6)
            if p == last_p and g == last_g and not running and not waiting:
                last_t = now
                continue  # vLLM logs at debug level while idle
            head = (f"Engine 000: Avg prompt throughput: {(p - last_p) / span:.1f} tokens/s, "
                    f"Avg generation throughput: {(g - last_g) / span:.1f} tokens/s, "
                    f"Running: {running} reqs, Waiting: {waiting} reqs, ")
            if self.fmt == "0.10":
                self.log.log("APIServer", "INFO", "v1/metrics/loggers.py:123",
                             head + f"GPU KV cache usage: {100 * usage:.1f}%, Prefix cache hit rate: 0.0%")
            else:
                pre_part = f"Preemptions: {pre - last_pre}, " if pre > last_pre else ""
                self.log.log("APIServer", "INFO", _where(self.fmt, "stats"),
                             head + pre_part + f"GPU KV cache usage: {100 * usage:.1f}%, Prefix cache hit rate: 0.0%")
            last_p, last_g, last_pre, last_t = p, g, pre, now


def _make_handler(server: SimulatedServer) -> type[BaseHTTPRequestHandler]:
    phrases = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               500: "Internal Server Error", 503: "Service Unavailable"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # uvicorn-style access log on stdout instead
            pass

        def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
            if isinstance(payload, EventStream):
                body, content_type = payload.body(), "text/event-stream; charset=utf-8"
            elif isinstance(payload, bytes):
                body = payload
            else:
                body = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            server.log.raw("APIServer", f'INFO:     {self.client_address[0]}:{self.client_address[1]} - '
                                        f'"{self.command} {self.path} HTTP/1.1" {code} {phrases.get(code, "")}',
                           server.log.out)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._send(503 if server.engine.dead else 200, None)
            elif path == "/v1/models":
                self._send(200, server.models())
            elif path == "/version":
                self._send(200, {"version": server.plan.version})
            elif path == "/metrics":
                self._send(200, server.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, {"detail": "Not Found"})
                return
            try:
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                self._send(400, server._error("request body must be a JSON object", "BadRequestError", 400))
                return
            code, payload = server.generate(body, chat=path == "/v1/chat/completions")
            self._send(code, payload)
            if code == 500 and server.engine.dead:
                server.shutdown()  # vLLM's engine_error_handler: answer, then stop the server (terminate_if_errored)

    return Handler
