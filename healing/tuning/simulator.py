"""A vLLM 0.10-style server simulator with modelled GPU memory, for demos and canary tests.

It takes vLLM's flags (``--gpu-memory-utilization``, ``--max-num-seqs``, ``--max-model-len``, ``--port``,
``--host``, a model name), prints the log lines vLLM 0.10.2 prints (``(EngineCore_DP0 pid=N) INFO
11-23 10:20:36 [gpu_worker.py:276] …``) and fails with vLLM's exact message, traceback and a non-zero
exit under the same conditions vLLM would, computed from a GPU profile:

* free memory (total − other processes) < gmu × total → "Free memory on device …" (D)
* KV budget (gmu × total − weights − non-torch − activation peak) ≤ 0 → "No available memory …" (A),
  after "Available KV cache memory: -x GiB"
* one request of max_model_len does not fit the KV budget → "To serve at least one request …" (C')
* CUDA graphs do not fit outside the budget → "CUDA error: out of memory" inside ``capture_model``
* max_num_seqs × sampler bytes > headroom → "CUDA out of memory occurred when warming up sampler" (E)

When healthy it serves ``GET /health``, ``GET /v1/models`` and ``POST /v1/completions`` (OpenAI-compatible,
tiny deterministic text) on a threaded stdlib HTTP server, logs periodic stats lines, and stops cleanly
on SIGTERM/SIGINT. The memory profiling breakdown is printed as vLLM does with
``VLLM_LOGGING_LEVEL=DEBUG``, so the Observer can read the card's size from it.

Run it as ``python -m healing.tuning.simulator [flags]`` or ``selfheal simulate vllm [flags]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from healing.tuning.simargs import add_arguments

VERSION = "0.10.2"
GIB = 1024**3
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


@dataclass(frozen=True)
class GpuProfile:
    """The modelled GPU and model. Sizes in GiB (Decimal), per-token/per-seq sizes in bytes."""

    name: str
    gpu_name: str
    total_gib: Decimal
    other_processes_gib: Decimal
    weights_gib: Decimal
    non_torch_gib: Decimal
    activation_peak_gib: Decimal
    kv_bytes_per_token: int
    graph_capture_gib: Decimal
    sampler_bytes_per_seq: int
    startup_delay_s: float = 0.5
    model_max_len: int = 32768  # max_position_embeddings of the model's config.json
    block_size: int = 16
    token_latency_s: float = 0.002


# Qwen2.5-1.5B in bf16: 28 layers × K,V × 2 KV heads × 128 dims × 2 bytes = 28672 bytes per token.
PROFILES: dict[str, GpuProfile] = {
    "default": GpuProfile(
        name="default", gpu_name="NVIDIA L4", total_gib=Decimal("22.05"), other_processes_gib=Decimal("0.30"),
        weights_gib=Decimal("2.89"), non_torch_gib=Decimal("0.10"), activation_peak_gib=Decimal("1.20"),
        kv_bytes_per_token=28672, graph_capture_gib=Decimal("0.43"), sampler_bytes_per_seq=4 << 20),
    # The seed's scenario: a 12 GiB card whose resident services (speech, embeddings …) hold 5.928 GiB.
    # At gmu 0.60 vLLM wants 7.2 GiB but 6.07 are free: 1155 MiB short. 0.55 would be needed, below
    # the actuator bound 0.60 — the only right answer is to escalate.
    "seed": GpuProfile(
        name="seed", gpu_name="NVIDIA GeForce RTX 3060", total_gib=Decimal("12.0"), other_processes_gib=Decimal("5.928"),
        weights_gib=Decimal("2.89"), non_torch_gib=Decimal("0.10"), activation_peak_gib=Decimal("1.20"),
        kv_bytes_per_token=28672, graph_capture_gib=Decimal("0.43"), sampler_bytes_per_seq=4 << 20),
    # A 7B-class model on a 16 GiB card: at gmu 0.80 the KV cache is 0.9 GiB short; 0.90 fits.
    "tight": GpuProfile(
        name="tight", gpu_name="NVIDIA RTX A4000", total_gib=Decimal("15.75"), other_processes_gib=Decimal("0.25"),
        weights_gib=Decimal("11.90"), non_torch_gib=Decimal("0.15"), activation_peak_gib=Decimal("1.45"),
        kv_bytes_per_token=131072, graph_capture_gib=Decimal("0.50"), sampler_bytes_per_seq=16 << 20,
        model_max_len=32768),
}


def load_profile(spec: str | None) -> GpuProfile:
    """A built-in profile name, or a JSON/YAML file overriding fields of the default profile."""
    if not spec:
        return PROFILES["default"]
    if spec in PROFILES:
        return PROFILES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--profile: {spec!r} is neither a built-in profile ({', '.join(PROFILES)}) nor a file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"--profile: cannot read {spec}: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--profile: {spec} must hold a mapping")
    base = PROFILES[str(data.pop("base", "default"))] if str(data.get("base", "default")) in PROFILES else PROFILES["default"]
    known = {f.name: f.type for f in fields(GpuProfile)}
    changes: dict[str, Any] = {"name": path.stem}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"--profile: unknown key {key!r} in {spec}")
        current = getattr(base, key)
        try:
            if isinstance(current, Decimal):
                changes[key] = Decimal(str(value))
            elif isinstance(current, bool) or isinstance(current, str):
                changes[key] = type(current)(value)
            elif isinstance(current, int):
                changes[key] = int(value)
            else:
                changes[key] = float(value)
        except (InvalidOperation, TypeError, ValueError):
            raise ValueError(f"--profile: {key} has a bad value {value!r}") from None
    return replace(base, **changes)


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


# --------------------------------------------------------------------------- memory plan (pure)

@dataclass(frozen=True)
class SimConfig:
    gpu_memory_utilization: Decimal = Decimal("0.9")
    max_num_seqs: int = 256
    max_model_len: int | None = None  # None: the model's own limit, as vLLM does
    enforce_eager: bool = False


@dataclass(frozen=True)
class MemoryPlan:
    """What vLLM would compute at startup; ``failure`` is None when the server comes up."""

    failure: str | None  # "I", "J", "D", "A", "C'", "graph", "E" or None
    message: str | None  # vLLM's exact error text
    total_bytes: int
    free_bytes: int
    requested_bytes: int
    kv_available_bytes: int
    num_gpu_blocks: int
    kv_tokens: int
    max_model_len: int
    needed_bytes: int
    estimated_max_len: int
    graph_bytes: int
    sampler_bytes: int
    headroom_bytes: int
    max_concurrency: float

    @property
    def ok(self) -> bool:
        return self.failure is None


def _bytes(gib: Decimal) -> int:
    return int((gib * GIB).to_integral_value(rounding=ROUND_FLOOR))


def _r2(nbytes: float) -> float:
    """vLLM's ``round(b / GiB_bytes, 2)`` (prints 12.0, 6.07 …)."""
    return round(nbytes / GIB, 2)


def plan_memory(profile: GpuProfile, config: SimConfig) -> MemoryPlan:
    """Pure: the startup memory arithmetic of vLLM 0.10.2's V1 worker, on the modelled GPU."""
    gmu = config.gpu_memory_utilization
    total = _bytes(profile.total_gib)
    free = total - _bytes(profile.other_processes_gib)
    requested = int((Decimal(total) * gmu).to_integral_value(rounding=ROUND_FLOOR))
    mml = config.max_model_len if config.max_model_len is not None else profile.model_max_len
    non_kv = _bytes(profile.weights_gib) + _bytes(profile.non_torch_gib) + _bytes(profile.activation_peak_gib)
    kv_avail = requested - non_kv
    per_block = profile.kv_bytes_per_token * profile.block_size
    blocks = max(kv_avail, 0) // per_block
    kv_tokens = blocks * profile.block_size
    needed = math.ceil(mml / profile.block_size) * per_block
    estimate = blocks * profile.block_size if kv_avail > 0 else 0
    graph = 0 if config.enforce_eager else _bytes(profile.graph_capture_gib)
    sampler = config.max_num_seqs * profile.sampler_bytes_per_seq
    headroom = free - requested - graph + _bytes(profile.activation_peak_gib)
    concurrency = kv_tokens / mml if mml else 0.0
    base = dict(total_bytes=total, free_bytes=free, requested_bytes=requested, kv_available_bytes=kv_avail,
                num_gpu_blocks=blocks, kv_tokens=kv_tokens, max_model_len=mml, needed_bytes=needed,
                estimated_max_len=estimate, graph_bytes=graph, sampler_bytes=sampler, headroom_bytes=headroom,
                max_concurrency=concurrency)

    def fail(kind: str, message: str) -> MemoryPlan:
        return MemoryPlan(failure=kind, message=message, **base)

    if not 0 < gmu < 1:
        return fail("I", f"GPU memory utilization must be less than 1.0. Got {_flag_float(gmu)}.")
    if mml > profile.model_max_len:
        return fail("J", f"User-specified max_model_len ({mml}) is greater than the derived max_model_len "
                         f"(max_position_embeddings={profile.model_max_len} or model_max_length=None in model's "
                         f"config.json). To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. "
                         f"VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution.")
    if free < requested:
        return fail("D", f"Free memory on device ({_r2(free)}/{_r2(total)} GiB) on startup is less than desired GPU "
                         f"memory utilization ({_flag_float(gmu)}, {_r2(requested)} GiB). Decrease GPU memory utilization "
                         f"or reduce GPU memory used by other processes.")
    if kv_avail <= 0:
        return fail("A", "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
                         "initializing the engine.")
    if needed > kv_avail:
        est = (f" Based on the available memory, the estimated maximum model length is {estimate}."
               if estimate > 0 else "")
        return fail("C'", f"To serve at least one request with the models's max seq len ({mml}), "
                          f"({needed / GIB:.2f} GiB KV cache is needed, which is larger than the available KV cache "
                          f"memory ({kv_avail / GIB:.2f} GiB).{est} Try increasing `gpu_memory_utilization` or "
                          f"decreasing `max_model_len` when initializing the engine.")
    if graph > free - requested:
        return fail("graph", "CUDA error: out of memory")
    if sampler > headroom:
        return fail("E", f"CUDA out of memory occurred when warming up sampler with {config.max_num_seqs} dummy "
                         f"requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` when initializing "
                         f"the engine.")
    return MemoryPlan(failure=None, message=None, **base)


def _flag_float(d: Decimal) -> str:
    return repr(float(d))


def _torch_size(nbytes: int) -> str:
    """PyTorch's format_size: bytes, KiB, MiB, GiB with two decimals."""
    if nbytes < 1024:
        return f"{nbytes} bytes"
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} bytes"


# --------------------------------------------------------------------------- log output

class VllmLog:
    """Writes vLLM 0.10.2-style lines: ``(Proc pid=N) LEVEL MM-DD HH:MM:SS [file:line] message``."""

    def __init__(self, out: TextIO, err: TextIO, pid: int) -> None:
        self.out, self.err, self.pid = out, err, pid
        self._lock = threading.Lock()

    def log(self, proc: str, level: str, where: str, message: str) -> None:
        stamp = datetime.now().strftime("%m-%d %H:%M:%S")
        with self._lock:
            for piece in message.split("\n"):  # vLLM's formatter repeats the prefix on every line
                self.out.write(f"({proc} pid={self.pid}) {level} {stamp} [{where.rsplit('/', 1)[-1]}] {piece}\n")
            self.out.flush()

    def raw(self, proc: str, text: str, stream: TextIO | None = None) -> None:
        target = stream or self.err
        with self._lock:
            for piece in text.split("\n"):
                target.write(f"({proc} pid={self.pid}) {piece}\n")
            target.flush()


def _traceback(frames: list[tuple[str, int, str, str]], exc_line: str) -> str:
    lines = ["Traceback (most recent call last):"]
    for file, no, func, code in frames:
        lines.append(f'  File "/usr/local/lib/python3.12/dist-packages/vllm/{file}", line {no}, in {func}')
        lines.append(f"    {code}")
    lines.append(exc_line)
    return "\n".join(lines)


_ENGINE_FRAMES = [
    ("v1/engine/core.py", 709, "run_engine_core", "engine_core = EngineCoreProc(*args, **kwargs)"),
    ("v1/engine/core.py", 505, "__init__", "super().__init__(vllm_config, executor_class, log_stats,"),
]
_FAILURE_FRAMES: dict[str, list[tuple[str, int, str, str]]] = {
    "D": [("v1/engine/core.py", 80, "__init__", "self.model_executor = executor_class(vllm_config)"),
          ("v1/worker/gpu_worker.py", 183, "init_device", "raise ValueError(")],
    "A": [("v1/engine/core.py", 91, "__init__", "self._initialize_kv_caches(vllm_config)"),
          ("v1/core/kv_cache_utils.py", 699, "check_enough_kv_cache_memory", "raise ValueError(\"No available memory for the cache blocks. \"")],
    "C'": [("v1/engine/core.py", 91, "__init__", "self._initialize_kv_caches(vllm_config)"),
           ("v1/core/kv_cache_utils.py", 716, "check_enough_kv_cache_memory", "raise ValueError(")],
    "graph": [("v1/engine/core.py", 199, "_initialize_kv_caches", "self.model_executor.initialize_from_config(kv_cache_configs)"),
              ("v1/worker/gpu_worker.py", 344, "compile_or_warm_up_model", "self.model_runner.capture_model()"),
              ("v1/worker/gpu_model_runner.py", 3062, "capture_model", "self._capture_cudagraphs("),
              ("v1/worker/gpu_model_runner.py", 3118, "_capture_cudagraphs", "self._dummy_run(num_tokens,"),
              ("compilation/cuda_graph.py", 173, "__call__", "with torch.cuda.graph(cudagraph, pool=self.graph_pool):")],
    "E": [("v1/engine/core.py", 199, "_initialize_kv_caches", "self.model_executor.initialize_from_config(kv_cache_configs)"),
          ("v1/worker/gpu_worker.py", 375, "compile_or_warm_up_model", "self.model_runner._dummy_sampler_run("),
          ("v1/worker/gpu_model_runner.py", 2681, "_dummy_sampler_run", "raise RuntimeError(")],
}


# --------------------------------------------------------------------------- the server

@dataclass
class _Stats:
    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    in_flight_tokens: int = 0
    requests: int = 0


class SimulatedServer:
    """The healthy simulator: HTTP endpoints, concurrency limited to max_num_seqs, stats lines."""

    def __init__(self, args: argparse.Namespace, profile: GpuProfile, plan: MemoryPlan, log: VllmLog) -> None:
        self.args, self.profile, self.plan, self.log = args, profile, plan, log
        self.model = args.served_model_name or args.model_name
        self.stats = _Stats()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(args.max_num_seqs)
        self._stop = threading.Event()
        self.httpd: ThreadingHTTPServer | None = None

    # -- requests
    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        model = body.get("model", self.model)
        if model != self.model:
            return 404, _error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        if not isinstance(prompt, str):
            return 400, _error("prompt must be a string or a list of strings", "BadRequestError", 400)
        try:
            max_tokens = int(body.get("max_tokens", 16))
        except (TypeError, ValueError):
            return 400, _error("max_tokens must be an integer", "BadRequestError", 400)
        if max_tokens < 1:
            return 400, _error("max_tokens must be at least 1", "BadRequestError", 400)
        prompt_tokens = max(1, len(prompt.split()))
        mml = self.plan.max_model_len
        if prompt_tokens + max_tokens > mml:
            return 400, _error(f"This model's maximum context length is {mml} tokens. However, you requested "
                               f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                               f"completion). Please reduce the length of the messages or completion.", "BadRequestError", 400)
        with self._lock:
            self.stats.waiting += 1
        with self._slots:
            with self._lock:
                self.stats.waiting -= 1
                self.stats.running += 1
                self.stats.in_flight_tokens += prompt_tokens + max_tokens
            try:
                time.sleep(self.profile.token_latency_s * max_tokens)
            finally:
                with self._lock:
                    self.stats.running -= 1
                    self.stats.in_flight_tokens -= prompt_tokens + max_tokens
                    self.stats.prompt_tokens += prompt_tokens
                    self.stats.generation_tokens += max_tokens
                    self.stats.requests += 1
        text = _deterministic_text(prompt, max_tokens)
        digest = hashlib.sha256(f"{prompt}|{max_tokens}|{time.monotonic_ns()}".encode()).hexdigest()[:32]
        return 200, {
            "id": f"cmpl-{digest}", "object": "text_completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                      "total_tokens": prompt_tokens + max_tokens},
        }

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": self.args.model_name, "parent": None, "max_model_len": self.plan.max_model_len}]}

    # -- lifecycle
    def serve(self) -> int:
        handler = _make_handler(self)
        try:
            self.httpd = ThreadingHTTPServer((self.args.host, self.args.port), handler)
        except OSError as exc:
            self.log.raw("APIServer", _traceback([("entrypoints/openai/api_server.py", 1921, "run_server", "sock = create_server_socket(sock_addr)")],
                                                 f"OSError: [Errno {exc.errno}] {exc.strerror}"))
            return 1
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.log.log("APIServer", "INFO", "entrypoints/openai/api_server.py:1971", f"Starting vLLM API server 0 on http://{host}:{port}")
        for route in ("/health", "/v1/models", "/v1/completions"):
            self.log.log("APIServer", "INFO", "entrypoints/launcher.py:37", f"Route: {route}, Methods: {'POST' if 'completions' in route else 'GET'}")
        self.log.raw("APIServer", f"INFO:     Started server process [{self.log.pid}]", self.log.out)
        self.log.raw("APIServer", "INFO:     Waiting for application startup.", self.log.out)
        self.log.raw("APIServer", "INFO:     Application startup complete.", self.log.out)
        stats = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        stats.start()
        self.httpd.serve_forever(poll_interval=0.1)
        self._stop.set()
        self.httpd.server_close()
        self.log.log("APIServer", "INFO", "entrypoints/launcher.py:101", "Shutting down FastAPI HTTP server.")
        self.log.raw("APIServer", "INFO:     Shutting down", self.log.out)
        self.log.raw("APIServer", "INFO:     Application shutdown complete.", self.log.out)
        return 0

    def shutdown(self) -> None:
        if self.httpd is not None:
            threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    def _stats_loop(self) -> None:
        interval = self.args.stats_interval
        last_p = last_g = 0
        last_t = time.monotonic()
        while not self._stop.wait(interval):
            with self._lock:
                s = replace(self.stats)
            now = time.monotonic()
            span = max(now - last_t, 1e-6)
            if s.prompt_tokens == last_p and s.generation_tokens == last_g and not s.running and not s.waiting:
                last_t = now
                continue  # vLLM only logs while there is activity
            kv = 100.0 * s.in_flight_tokens / self.plan.kv_tokens if self.plan.kv_tokens else 0.0
            self.log.log("APIServer", "INFO", "v1/metrics/loggers.py:123",
                         f"Engine 000: Avg prompt throughput: {(s.prompt_tokens - last_p) / span:.1f} tokens/s, "
                         f"Avg generation throughput: {(s.generation_tokens - last_g) / span:.1f} tokens/s, "
                         f"Running: {s.running} reqs, Waiting: {s.waiting} reqs, GPU KV cache usage: {min(kv, 100.0):.1f}%, "
                         f"Prefix cache hit rate: 0.0%")
            last_p, last_g, last_t = s.prompt_tokens, s.generation_tokens, now


_WORDS = ("the", "cache", "model", "token", "memory", "server", "request", "block", "engine", "heals",
          "bounded", "canary", "fix", "grid", "step", "safe")


def _deterministic_text(prompt: str, n: int) -> str:
    seed = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    return " " + " ".join(_WORDS[seed[i % len(seed)] % len(_WORDS)] for i in range(n))


def _error(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def _make_handler(server: SimulatedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # uvicorn-style access log on stdout
            pass

        def _send(self, code: int, payload: dict[str, Any] | None) -> None:
            body = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            phrase = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(code, "")
            server.log.raw("APIServer", f'INFO:     {self.client_address[0]}:{self.client_address[1]} - '
                                        f'"{self.command} {self.path} HTTP/1.1" {code} {phrase}', server.log.out)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            if self.path == "/health":
                self._send(200, None)
            elif self.path == "/v1/models":
                self._send(200, server.models())
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/completions":
                self._send(404, {"detail": "Not Found"})
                return
            try:
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                self._send(400, _error("request body must be a JSON object", "BadRequestError", 400))
                return
            code, payload = server.complete(body)
            self._send(code, payload)

    return Handler


# --------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m healing.tuning.simulator", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the simulator; returns the exit status (1 on a simulated vLLM failure, 2 on bad flags)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_from_args(args, out, err)


def run_from_args(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run with parsed flags (see healing.tuning.simargs)."""
    args.model_name = args.model or args.model_tag or DEFAULT_MODEL
    out, err = out or sys.stdout, err or sys.stderr
    try:
        profile = load_profile(args.profile)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return 2
    if args.startup_delay is not None:
        profile = replace(profile, startup_delay_s=max(0.0, args.startup_delay))
    if args.max_num_seqs < 1 or (args.max_model_len is not None and args.max_model_len < 1) or not 0 <= args.port <= 65535:
        err.write("error: --max-num-seqs, --max-model-len and --port must be positive (port 0-65535, 0 picks a free one)\n")
        return 2
    config = SimConfig(args.gpu_memory_utilization, args.max_num_seqs, args.max_model_len, args.enforce_eager)
    plan = plan_memory(profile, config)
    log = VllmLog(out, err, os.getpid())
    return run(args, profile, config, plan, log)


def run(args: argparse.Namespace, profile: GpuProfile, config: SimConfig, plan: MemoryPlan, log: VllmLog) -> int:
    pause = profile.startup_delay_s / 8
    log.log("APIServer", "INFO", "entrypoints/openai/api_server.py:1896", f"vLLM API server version {VERSION}")
    non_default = {"model_tag": args.model_tag, "host": args.host, "port": args.port, "model": args.model_name}
    if config.max_model_len is not None:
        non_default["max_model_len"] = config.max_model_len
    if config.gpu_memory_utilization != Decimal("0.9"):
        non_default["gpu_memory_utilization"] = float(config.gpu_memory_utilization)
    if config.max_num_seqs != 256:
        non_default["max_num_seqs"] = config.max_num_seqs
    log.log("APIServer", "INFO", "entrypoints/utils.py:328", f"non-default args: {non_default!r}")
    if plan.failure in ("I", "J"):
        frames = [("engine/arg_utils.py", 1161, "create_engine_config", "cache_config = CacheConfig("),
                  ("config/cache.py", 146, "_verify_args", "raise ValueError(")]
        log.raw("APIServer", _traceback(frames, f"ValueError: {plan.message}"))
        return 1
    log.log("APIServer", "INFO", "config/__init__.py:1815", f"Using max model len {plan.max_model_len}")
    time.sleep(pause)
    log.log("EngineCore_DP0", "INFO", "v1/engine/core.py:654", "Waiting for init message from front-end.")
    log.log("EngineCore_DP0", "INFO", "v1/engine/core.py:76",
            f"Initializing a V1 LLM engine (v{VERSION}) with config: model='{args.model_name}', dtype=torch.bfloat16, "
            f"max_seq_len={plan.max_model_len}, tensor_parallel_size=1, enforce_eager={config.enforce_eager}, seed={args.seed}")
    log.log("EngineCore_DP0", "INFO", "distributed/parallel_state.py:1165",
            "rank 0 in world size 1 is assigned as DP rank 0, PP rank 0, TP rank 0, EP rank 0")
    if plan.failure == "D":
        return _engine_failure(log, plan, "ValueError")
    time.sleep(pause)
    log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:2338", f"Starting to load model {args.model_name}...")
    time.sleep(pause * 2)
    log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:2392",
            f"Model loading took {float(profile.weights_gib):.4f} GiB and {pause * 2:.6f} seconds")
    time.sleep(pause)
    prof = profile
    log.log("EngineCore_DP0", "DEBUG", "v1/worker/gpu_worker.py:263",
            f"Memory profiling takes {pause:.2f} seconds\n"
            f"the current vLLM instance can use total_gpu_memory ({plan.total_bytes / GIB:.2f}GiB) x gpu_memory_utilization "
            f"({float(config.gpu_memory_utilization):.2f}) = {plan.requested_bytes / GIB:.2f}GiB\n"
            f"model weights take {float(prof.weights_gib):.2f}GiB; non_torch_memory takes {float(prof.non_torch_gib):.2f}GiB; "
            f"PyTorch activation peak memory takes {float(prof.activation_peak_gib):.2f}GiB; the rest of the memory "
            f"reserved for KV Cache is {plan.kv_available_bytes / GIB:.2f}GiB.")
    log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_worker.py:276", f"Available KV cache memory: {plan.kv_available_bytes / GIB:.2f} GiB")
    if plan.failure in ("A", "C'"):
        return _engine_failure(log, plan, "ValueError")
    log.log("EngineCore_DP0", "INFO", "v1/core/kv_cache_utils.py:1028", f"GPU KV cache size: {plan.kv_tokens:,} tokens")
    log.log("EngineCore_DP0", "INFO", "v1/core/kv_cache_utils.py:1032",
            f"Maximum concurrency for {plan.max_model_len:,} tokens per request: {plan.max_concurrency:.2f}x")
    if not config.enforce_eager:
        log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:3047",
                "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 0%|          | 0/67 [00:00<?, ?it/s]")
        time.sleep(pause)
        if plan.failure == "graph":
            return _engine_failure(log, plan, "RuntimeError")
        log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:3118",
                f"Graph capturing finished in {max(1, round(pause * 8))} secs, took {plan.graph_bytes / GIB:.2f} GiB")
    if plan.failure == "E":
        return _engine_failure(log, plan, "RuntimeError", profile=profile)
    log.log("EngineCore_DP0", "INFO", "v1/engine/core.py:218",
            f"init engine (profile, create kv cache, warmup model) took {profile.startup_delay_s:.2f} seconds")
    server = SimulatedServer(args, profile, plan, log)

    def stop(signum: int, _frame: Any) -> None:
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return server.serve()


def _engine_failure(log: VllmLog, plan: MemoryPlan, exc_type: str, profile: GpuProfile | None = None) -> int:
    """Print the failure as vLLM 0.10.2 does: logged traceback, raw process traceback, API server re-raise."""
    assert plan.failure is not None and plan.message is not None
    frames = _ENGINE_FRAMES + _FAILURE_FRAMES[plan.failure]
    body = ""
    if plan.failure == "E" and profile is not None:
        # the sampler OOM is a chained exception: PyTorch's own message first
        free_now = max(plan.headroom_bytes, 0)
        this = plan.requested_bytes - _bytes(profile.activation_peak_gib) + plan.graph_bytes
        cause = _traceback(
            [("v1/worker/gpu_model_runner.py", 2670, "_dummy_sampler_run", "sampler_output = self.sampler(logits=logits,"),
             ("v1/sample/sampler.py", 95, "forward", "logits = self.apply_temperature(logits, sampling_metadata.temperature)")],
            f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {_torch_size(plan.sampler_bytes)}. GPU 0 has a total "
            f"capacity of {_torch_size(plan.total_bytes)} of which {_torch_size(free_now)} is free. Including non-PyTorch memory, "
            f"this process has {_torch_size(this)} memory in use. Of the allocated memory {_torch_size(this)} is allocated by "
            f"PyTorch, and 0 bytes is reserved by PyTorch but unallocated.")
        body = cause + "\n\nThe above exception was the direct cause of the following exception:\n\n"
    exc = f"{exc_type}: {plan.message}"
    if plan.failure == "graph":
        exc += ("\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
                "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
                "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
    text = body + _traceback(frames, exc)
    log.log("EngineCore_DP0", "ERROR", "v1/engine/core.py:718", "EngineCore failed to start.\n" + text)
    log.raw("EngineCore_DP0", "Process EngineCore_DP0:\n" + text)
    log.raw("APIServer", _traceback(
        [("entrypoints/openai/api_server.py", 1896, "run_server_worker", "async with build_async_engine_client("),
         ("v1/engine/utils.py", 722, "wait_for_engine_startup", "raise RuntimeError(\"Engine core initialization failed. \"")],
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"))
    return 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["GpuProfile", "MemoryPlan", "PROFILES", "SimConfig", "load_profile", "main", "plan_memory"]
