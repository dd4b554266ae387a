"""The canary: start the real service with a candidate's values, probe it, read its log, stop it cleanly.

* The command is an argv template (``tuning.canary.command``) with ``{python}``, ``{host}``, ``{port}``
  and one ``{vllm.…}`` placeholder per actuator. It is rendered into a plain list and started without a
  shell, in its own process group (``start_new_session``), stdout and stderr into one log file.
* Readiness: the health URL answers 200, or a line of the log matches ``ready_log_regex``, before
  ``start_timeout_s``; a process that exits first failed to start.
* Probe: ``probe.requests`` POSTs to ``/v1/completions`` (OpenAI-compatible) through httpx, with
  ``probe.concurrency`` in flight: latency p50/p95, errors, throughput (completion tokens per second).
* The canary's own log goes through the Observer: any memory failure there fails the canary.
* Stop: SIGTERM to the group, SIGKILL after ``stop_grace_s``.

Hard gates (started, healthy, no_memory_error, probe_passed) are kept apart from the weighted score
(:func:`score_result`), which compares against a baseline run of the current config where one ran,
else against the configured targets.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.config import SECRET_WORDS
from healing.tuning.actuators import MAX_NUM_SEQS, TuningSettings, to_decimal
from healing.tuning.runner_config import PLACEHOLDER, CanarySettings, ScoringSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GATES = ("started", "healthy", "no_memory_error", "probe_passed")
EXCERPT_LINES = 40


class TemplateError(ValueError):
    """A candidate cannot be rendered into the command template (reason is one line)."""


@dataclass
class CanaryResult:
    """What one canary run showed; ``gates`` are pass/fail, ``metrics`` feed the score."""

    gates: dict[str, bool]
    metrics: dict[str, float | int | None]
    argv: list[str]
    log_path: str
    log_excerpt: str
    reason: str
    events: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(self.gates.get(g, False) for g in GATES)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it); each canary gets its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mask_argv(argv: list[str]) -> list[str]:
    """argv for the audit trail: values of secret-looking flags (``--api-key X``, ``--token=X``) become ***."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if arg.startswith("-"):
            name, eq, _value = arg.partition("=")
            secret = any(word in name.lower() for word in SECRET_WORDS)
            if secret and eq:
                out.append(f"{name}=***")
                continue
            hide_next = secret and not eq
        out.append(arg)
    return out


def missing_placeholders(canary: CanarySettings, changed: Mapping[str, Any]) -> list[str]:
    """Parameters a candidate changes that the template cannot pass to the service."""
    present = canary.placeholders()
    return [p for p in changed if p not in present]


def render_argv(canary: CanarySettings, values: Mapping[str, Any], port: int, tuning: TuningSettings) -> list[str]:
    """Fill the template; every ``{vllm.…}`` placeholder needs a value (TemplateError names the one missing)."""
    if not canary.command:
        raise TemplateError("tuning.canary.command is not configured")
    base = {"python": sys.executable, "port": str(port), "host": canary.host}

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in base:
            return base[name]
        value = values.get(name)
        if value is None:
            raise TemplateError(f"no value for {{{name}}}: set it in tuning.target_config (the running config)")
        return tuning.actuators[name].format(to_decimal(value))

    return [PLACEHOLDER.sub(fill, arg) for arg in canary.command]


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def probe(base_url: str, canary: CanarySettings) -> dict[str, float | int | None]:
    """Send the probe load; latencies in ms, errors counted, throughput in completion tokens per second."""
    import httpx

    p = canary.probe
    body: dict[str, Any] = {"prompt": p.prompt, "max_tokens": p.max_tokens, "temperature": 0}
    if p.model:
        body["model"] = p.model

    def one(client: httpx.Client) -> tuple[float | None, int]:
        start = time.perf_counter()
        try:
            r = client.post(f"{base_url}/v1/completions", json=body)
        except httpx.HTTPError:
            return None, 0
        elapsed = (time.perf_counter() - start) * 1000
        if r.status_code != 200:
            return None, 0
        try:
            generated = int(r.json().get("usage", {}).get("completion_tokens", 0))
        except (ValueError, TypeError, AttributeError):
            return None, 0
        return elapsed, generated

    start = time.perf_counter()
    with httpx.Client(timeout=p.timeout_s) as client, ThreadPoolExecutor(p.concurrency) as pool:
        results = list(pool.map(lambda _i: one(client), range(p.requests)))
    wall = max(time.perf_counter() - start, 1e-6)
    latencies = [lat for lat, _ in results if lat is not None]
    errors = len(results) - len(latencies)
    generated = sum(n for _, n in results)
    return {
        "requests": p.requests, "errors": errors, "error_rate": errors / p.requests,
        "latency_p50_ms": round(_percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p95_ms": round(_percentile(latencies, 0.95), 3) if latencies else None,
        "throughput_tps": round(generated / wall, 3),
    }


def _ready(canary: CanarySettings, port: int, log_path: Path, proc: subprocess.Popen[bytes]) -> tuple[bool, str]:
    import httpx

    url = canary.health_url.format(host=canary.host, port=port) if canary.health_url else None
    regex = re.compile(canary.ready_log_regex, re.MULTILINE) if canary.ready_log_regex else None
    deadline = time.monotonic() + canary.start_timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False, f"the canary exited with status {proc.returncode} before it was ready"
            if url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return True, f"healthy: {url} answered 200"
            if regex is not None:
                with contextlib.suppress(OSError):
                    text = log_path.read_text(encoding="utf-8", errors="replace")
                    if regex.search(text):
                        return True, f"ready: the log matched {canary.ready_log_regex!r}"
            time.sleep(0.05)
    return False, f"not ready within {canary.start_timeout_s:g} s"


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float) -> str:
    """SIGTERM to the canary's process group, SIGKILL after ``grace_s``; returns how it ended."""
    if proc.poll() is not None:
        return f"exited with status {proc.returncode}"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
        how = f"stopped by SIGTERM (status {proc.returncode})"
    except subprocess.TimeoutExpired:
        how = f"killed with SIGKILL after {grace_s:g} s"
    # whatever is left of the group (children that ignored SIGTERM) goes too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return how


def run_canary(canary: CanarySettings, values: Mapping[str, Any], tuning: TuningSettings, log_dir: Path, name: str) -> CanaryResult:
    """Start, wait for readiness, probe, stop, and read the canary's log back through the Observer."""
    from healing.tuning.observer import Observer

    started_at = time.monotonic()
    port = free_port(canary.host)
    argv = render_argv(canary, values, port, tuning)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    env = dict(os.environ)
    # the simulator template runs ``-m healing.tuning.simulator``: make this checkout importable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(canary.env)
    gates = dict.fromkeys(GATES, False)
    metrics: dict[str, float | int | None] = {}
    with open(log_path, "wb") as log_fh:
        try:
            proc = subprocess.Popen(argv, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        except OSError as exc:
            return CanaryResult(gates, metrics, mask_argv(argv), str(log_path), "",
                                f"cannot start {argv[0]!r}: {exc.strerror or type(exc).__name__}",
                                duration_s=time.monotonic() - started_at)
        try:
            ready, why = _ready(canary, port, log_path, proc)
            gates["started"] = proc.poll() is None or ready
            gates["healthy"] = ready
            reason = why
            if ready:
                metrics = probe(f"http://{canary.host}:{port}", canary)
                gates["probe_passed"] = (metrics["errors"] or 0) < canary.probe.requests and \
                    float(metrics["error_rate"] or 0.0) <= canary.probe.max_error_rate
                if not gates["probe_passed"]:
                    reason = f"probe failed: {metrics['errors']} of {metrics['requests']} requests failed"
        finally:
            stopped = stop_process_group(proc, canary.stop_grace_s)
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    observer = Observer(tuning, current={k: v for k, v in values.items() if v is not None})
    events = observer.feed(lines) + observer.finish()
    gates["no_memory_error"] = not events
    if events:
        reason = f"memory error in the canary log: {events[0].event_class} (line {events[0].line})"
    tel = observer.telemetry
    metrics.update({"kv_cache_toks": tel.get("kv_cache_tokens"), "max_concurrency": tel.get("max_concurrency")})
    seqs = values.get(MAX_NUM_SEQS)
    if tel.get("max_concurrency") is not None and seqs:
        metrics["kv_headroom"] = round(min(1.0, float(tel["max_concurrency"]) / float(seqs)), 4)
    excerpt = "\n".join(lines[-EXCERPT_LINES:])
    return CanaryResult(gates, metrics, mask_argv(argv), str(log_path), excerpt, f"{reason}; {stopped}",
                        [e.to_json() for e in events], round(time.monotonic() - started_at, 3))


def score_result(result: CanaryResult, baseline: CanaryResult | None, scoring: ScoringSettings) -> tuple[float | None, dict[str, Any], str]:
    """(score, breakdown, verdict): verdict "failed" when a hard gate failed, else pass / inconclusive / failed by score."""
    if not result.passed:
        failed = [g for g in GATES if not result.gates.get(g)]
        return None, {"verdict": "failed", "failed_gates": failed}, "failed"
    m = result.metrics
    base = baseline.metrics if baseline is not None and baseline.passed else None
    components: dict[str, float | None] = {}
    p95 = m.get("latency_p95_ms")
    ref_lat = base.get("latency_p95_ms") if base else scoring.latency_target_ms
    components["latency"] = 1.0 if not p95 else min(1.0, float(ref_lat or scoring.latency_target_ms) / float(p95))
    tps = float(m.get("throughput_tps") or 0.0)
    ref_tps = float(base.get("throughput_tps") or 0.0) if base else scoring.throughput_target_tps
    components["throughput"] = 1.0 if ref_tps <= 0 else min(1.0, tps / ref_tps)
    components["errors"] = 1.0 - float(m.get("error_rate") or 0.0)
    headroom = m.get("kv_headroom")
    components["kv_headroom"] = float(headroom) if headroom is not None else None
    used = {k: v for k, v in components.items() if v is not None and scoring.weights.get(k, 0) > 0}
    total_w = sum(scoring.weights[k] for k in used)
    score = round(sum(scoring.weights[k] * v for k, v in used.items()) / total_w, 4) if total_w else 0.0
    if score >= scoring.pass_threshold:
        verdict = "pass"
    elif score >= scoring.marginal_threshold:
        verdict = "inconclusive"
    else:
        verdict = "failed"
    breakdown = {"verdict": verdict, "components": {k: (round(v, 4) if v is not None else None) for k, v in components.items()},
                 "weights": dict(scoring.weights), "against": "baseline" if base else "targets",
                 "pass_threshold": scoring.pass_threshold, "marginal_threshold": scoring.marginal_threshold}
    return score, breakdown, verdict
