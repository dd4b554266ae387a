"""The canary: start the real service with a candidate's values, probe it, read its log, stop it cleanly.

* The command is an argv template (``tuning.canary.command``) with ``{python}``, ``{host}``, ``{port}``
  and one ``{vllm.…}`` placeholder per actuator. It is rendered into a plain list and started without a
  shell, in its own process group (``start_new_session``), stdout and stderr into one log file.
* Readiness: the health URL answers 200, or a line of the log matches ``ready_log_regex``, before
  ``start_timeout_s``; a process that exits first failed to start.
* Probe: ``probe.requests`` POSTs (OpenAI-compatible) through httpx, with ``probe.concurrency`` in flight:
  latency p50/p95, errors, throughput (completion tokens per second). ``probe.api`` auto asks
  ``/v1/models`` for the model, tries ``/v1/chat/completions`` once and falls back to ``/v1/completions``
  when the service answers that the model has no chat template (vLLM 0.33: 400 BadRequestError "… you
  must provide a chat template if the tokenizer does not define one.") or has no chat route (404).
* The canary's ``/metrics`` (Prometheus text, as vLLM serves it) is scraped before, during (every
  ``metrics_interval_s``) and after the probe: KV cache usage (max seen), preemptions during the probe
  (counter delta), requests waiting/running (max), server-side TTFT and e2e p95 from the histogram
  deltas. No ``/metrics`` (older vLLM, another service) leaves those metrics empty: no data, no failure.
* The canary's own log goes through the Observer: any memory failure there fails the canary.
* Stop: SIGTERM to the group, SIGKILL after ``stop_grace_s``.

Hard gates (started, healthy, no_memory_error, probe_passed) are kept apart from the score. The score
(:func:`score_result`) is Kayenta's judge: each configured metric is classified pass / high / low against
the baseline run of the current config (allowed deviation ``tolerance`` relative + ``margin`` absolute),
or against its target when no baseline value exists; score = passed / judged (metrics without data are
left out and listed); a critical metric that fails fails the run whatever the score.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.config import SECRET_WORDS
from healing.tuning.actuators import MAX_NUM_SEQS, TuningSettings, to_decimal
from healing.tuning.runner_config import (
    PLACEHOLDER,
    CanarySettings,
    MetricRule,
    ProbeSettings,
    ScoringSettings,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GATES = ("started", "healthy", "no_memory_error", "probe_passed")
EXCERPT_LINES = 40
# vLLM 0.33's answer on /v1/chat/completions for a tokenizer without one (renderers/hf.py, a 400 BadRequestError)
NO_CHAT_TEMPLATE = "chat template"


class TemplateError(ValueError):
    """A candidate cannot be rendered into the command template (reason is one line)."""


@dataclass
class CanaryResult:
    """What one canary run showed; ``gates`` are pass/fail, ``metrics`` feed the score."""

    gates: dict[str, bool]
    metrics: dict[str, Any]
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


def metrics_url(canary: CanarySettings, port: int) -> str:
    """``tuning.canary.metrics_url`` filled in, else ``/metrics`` at the health URL's scheme, host and port."""
    if canary.metrics_url:
        return canary.metrics_url.format(host=canary.host, port=port)
    if canary.health_url:
        from urllib.parse import urlsplit

        parts = urlsplit(canary.health_url.format(host=canary.host, port=port))
        return f"{parts.scheme}://{parts.netloc}/metrics"
    return f"http://{canary.host}:{port}/metrics"


@dataclass
class MetricsSnapshot:
    """One scrape of vLLM's Prometheus metrics, summed over engines (KV usage: the fullest engine)."""

    kv_cache_usage: float | None = None
    preemptions_total: float | None = None
    requests_waiting: float | None = None
    requests_running: float | None = None
    # histogram → {upper bound: cumulative count}, summed over engines
    histograms: dict[str, dict[float, float]] = field(default_factory=dict)


# vLLM's sample names; gpu_cache_usage_perc is the name before 0.9 (deprecated there, gone in 0.20)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTIONS = "vllm:num_preemptions_total"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
HISTOGRAMS = {"e2e": "vllm:e2e_request_latency_seconds", "ttft": "vllm:time_to_first_token_seconds"}


def parse_vllm_metrics(text: str) -> MetricsSnapshot:
    """Read vLLM's gauges, counters and latency histograms from a Prometheus text body (ValueError if malformed)."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = MetricsSnapshot()
    bucket_names = {f"{name}_bucket": key for key, name in HISTOGRAMS.items()}

    def add(current: float | None, value: float) -> float:
        return value if current is None else current + value

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, float(sample.value)
            if math.isnan(value):
                continue
            if name in KV_USAGE:
                snap.kv_cache_usage = value if snap.kv_cache_usage is None else max(snap.kv_cache_usage, value)
            elif name == PREEMPTIONS:
                snap.preemptions_total = add(snap.preemptions_total, value)
            elif name == WAITING:
                snap.requests_waiting = add(snap.requests_waiting, value)
            elif name == RUNNING:
                snap.requests_running = add(snap.requests_running, value)
            elif name in bucket_names and "le" in sample.labels:
                buckets = snap.histograms.setdefault(bucket_names[name], {})
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
    return snap


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative buckets: linear inside the bucket holding rank q·count;
    a rank in the +Inf bucket answers the highest finite bound. None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > prev_count:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = (prev_bound if math.isinf(bound) else bound), count
    return prev_bound


class MetricsWatch:
    """Scrapes a /metrics URL before, during (a thread, every ``interval_s``) and after the probe."""

    def __init__(self, url: str, interval_s: float, timeout_s: float = 2.0) -> None:
        self.url, self.interval_s, self.timeout_s = url, interval_s, timeout_s
        self.snapshots: list[MetricsSnapshot] = []
        self.first: MetricsSnapshot | None = None
        self.last: MetricsSnapshot | None = None
        self.note = "not scraped"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape(self) -> MetricsSnapshot | None:
        import httpx

        try:
            r = httpx.get(self.url, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            self.note = f"{self.url} unreachable ({type(exc).__name__})"
            return None
        if r.status_code != 200:
            self.note = f"{self.url} answered {r.status_code}"
            return None
        try:
            snap = parse_vllm_metrics(r.text)
        except ValueError as exc:
            self.note = f"{self.url} is not Prometheus text ({str(exc)[:80]})"
            return None
        self.note = "scraped"
        self.snapshots.append(snap)
        return snap

    def __enter__(self) -> MetricsWatch:
        self.first = self.scrape()
        if self.first is not None:  # a service without /metrics is not polled during the probe
            self._thread = threading.Thread(target=self._poll, name="canary-metrics", daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.scrape()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)
            self.last = self.scrape()

    def summary(self) -> dict[str, Any]:
        """The /metrics part of the canary's metrics; None where the service did not tell."""
        def peak(attr: str) -> float | None:
            values = [v for v in (getattr(s, attr) for s in self.snapshots) if v is not None]
            return max(values) if values else None

        out: dict[str, Any] = {"metrics_source": self.note if not self.snapshots else "scraped",
                               "metrics_scrapes": len(self.snapshots), "kv_cache_usage_max": peak("kv_cache_usage"),
                               "preemptions": None, "requests_waiting_max": peak("requests_waiting"),
                               "requests_running_max": peak("requests_running"), "ttft_p95_ms": None, "e2e_p95_ms": None}
        first, last = self.first, self.last
        if first is None or last is None:
            return out
        if first.preemptions_total is not None and last.preemptions_total is not None:
            out["preemptions"] = max(0.0, last.preemptions_total - first.preemptions_total)
        for key in HISTOGRAMS:
            before, after = first.histograms.get(key, {}), last.histograms.get(key)
            if after:
                delta = {le: count - before.get(le, 0.0) for le, count in after.items()}
                p95 = histogram_quantile(0.95, delta)
                out[f"{key}_p95_ms"] = round(p95 * 1000, 3) if p95 is not None else None
        return out


def _model_name(client: Any, base_url: str) -> str | None:
    """The first model ``/v1/models`` lists (vLLM: the served model name), or None."""
    import httpx

    try:
        r = client.get(f"{base_url}/v1/models")
        data = r.json().get("data") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if isinstance(data, list) and data and isinstance(data[0], Mapping) and isinstance(data[0].get("id"), str):
        return str(data[0]["id"])
    return None


def _error_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        return str(error.get("message", ""))
    return str(body.get("detail", "") if isinstance(body, Mapping) else body)[:200]


def choose_api(client: Any, base_url: str, p: ProbeSettings) -> tuple[str, str | None, str]:
    """(api, model, why): ``chat`` or ``completions`` for the probe load and the model name to send."""
    import httpx

    model = p.model or _model_name(client, base_url)
    if p.api != "auto":
        return p.api, model, f"probe.api is {p.api}"
    body: dict[str, Any] = {"messages": [{"role": "user", "content": p.prompt}], "max_tokens": 1, "temperature": 0}
    if model:
        body["model"] = model
    try:
        r = client.post(f"{base_url}/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return "chat", model, f"chat completions unreachable ({type(exc).__name__}): kept chat"
    if r.status_code == 404:
        return "completions", model, "/v1/chat/completions answered 404: completions"
    if r.status_code == 400 and NO_CHAT_TEMPLATE in (message := _error_message(r)).lower():
        return "completions", model, f"no chat template ({message[:120]}): completions"
    return "chat", model, f"/v1/chat/completions answered {r.status_code}: chat"


def probe(base_url: str, canary: CanarySettings, metrics_at: str | None = None) -> dict[str, Any]:
    """Send the probe load; latencies in ms, errors counted, throughput in completion tokens per second,
    plus what the service's /metrics showed meanwhile (``metrics_at``; None: not scraped)."""
    import httpx

    p = canary.probe
    with httpx.Client(timeout=p.timeout_s) as client:
        api, model, api_why = choose_api(client, base_url, p)
    if api == "chat":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": p.prompt}], "max_tokens": p.max_tokens, "temperature": 0}
    else:
        path = "/v1/completions"
        body = {"prompt": p.prompt, "max_tokens": p.max_tokens, "temperature": 0}
    if model:
        body["model"] = model

    def one(client: httpx.Client) -> tuple[float | None, int]:
        start = time.perf_counter()
        try:
            r = client.post(f"{base_url}{path}", json=body)
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

    watch = MetricsWatch(metrics_at, canary.metrics_interval_s) if metrics_at else None
    with contextlib.ExitStack() as stack:
        if watch is not None:
            stack.enter_context(watch)
        start = time.perf_counter()
        with httpx.Client(timeout=p.timeout_s) as client, ThreadPoolExecutor(p.concurrency) as pool:
            results = list(pool.map(lambda _i: one(client), range(p.requests)))
        wall = max(time.perf_counter() - start, 1e-6)
    latencies = [lat for lat, _ in results if lat is not None]
    errors = len(results) - len(latencies)
    generated = sum(n for _, n in results)
    out: dict[str, Any] = {
        "api": api, "api_reason": api_why, "model": model,
        "requests": p.requests, "errors": errors, "error_rate": errors / p.requests,
        "latency_p50_ms": round(_percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p95_ms": round(_percentile(latencies, 0.95), 3) if latencies else None,
        "throughput_tps": round(generated / wall, 3),
    }
    if watch is not None:
        out.update(watch.summary())
    return out


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
    metrics: dict[str, Any] = {}
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
                metrics = probe(f"http://{canary.host}:{port}", canary, metrics_url(canary, port))
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


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def judge_metric(name: str, rule: MetricRule, value: Any, baseline_value: Any) -> dict[str, Any]:
    """One metric's verdict: ``pass``, ``high`` or ``low`` (outside the allowed range), or ``nodata``.

    Against a baseline the allowed range is ``baseline × (1 ± tolerance) ± margin`` on the side the
    direction calls bad; against a target (no baseline value) the target itself is the limit.
    """
    v, base = _number(value), _number(baseline_value)
    ref, source = (base, "baseline") if base is not None else (rule.target, "target")
    entry: dict[str, Any] = {"metric": rule.key, "value": v, "reference": ref, "against": source,
                             "direction": rule.direction, "critical": rule.critical, "min": None, "max": None}
    if v is None or ref is None:
        entry.update(classification="nodata", why="no value" if v is None else "no baseline value and no target")
        entry["against"] = None if ref is None else source
        return entry
    slack = abs(ref) * rule.tolerance + rule.margin if source == "baseline" else 0.0
    if rule.direction in ("increase_is_bad", "either_is_bad"):
        entry["max"] = round(ref + slack, 6)
    if rule.direction in ("decrease_is_bad", "either_is_bad"):
        entry["min"] = round(ref - slack, 6)
    if entry["max"] is not None and v > entry["max"]:
        entry.update(classification="high", why=f"{_fmt(v)} > allowed {_fmt(entry['max'])} ({source} {_fmt(ref)})")
    elif entry["min"] is not None and v < entry["min"]:
        entry.update(classification="low", why=f"{_fmt(v)} < allowed {_fmt(entry['min'])} ({source} {_fmt(ref)})")
    else:
        bound = " and ".join(x for x in (f"≥ {_fmt(entry['min'])}" if entry["min"] is not None else "",
                                          f"≤ {_fmt(entry['max'])}" if entry["max"] is not None else "") if x)
        entry.update(classification="pass", why=f"{_fmt(v)} {bound} ({source} {_fmt(ref)})")
    return entry


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def score_result(result: CanaryResult, baseline: CanaryResult | None, scoring: ScoringSettings) -> tuple[float | None, dict[str, Any], str]:
    """(score, breakdown, verdict): verdict "failed" when a hard gate failed; else Kayenta's judge — each metric
    pass/high/low against the baseline (or its target), score = passed / judged, a failed critical metric fails."""
    if not result.passed:
        failed = [g for g in GATES if not result.gates.get(g)]
        return None, {"verdict": "failed", "failed_gates": failed, "why": f"hard gate(s) failed: {', '.join(failed)}"}, "failed"
    base = baseline.metrics if baseline is not None and baseline.passed else {}
    per_metric = {name: judge_metric(name, rule, result.metrics.get(rule.key), base.get(rule.key))
                  for name, rule in scoring.metrics.items()}
    judged = [n for n, e in per_metric.items() if e["classification"] != "nodata"]
    passed = [n for n in judged if per_metric[n]["classification"] == "pass"]
    no_data = [n for n in per_metric if n not in judged]
    critical = [n for n in judged if per_metric[n]["critical"] and per_metric[n]["classification"] != "pass"]
    score = round(len(passed) / len(judged), 4) if judged else None
    share = f"{len(passed)} of {len(judged)} metrics pass"
    if critical:
        verdict = "failed"
        why = "critical metric failed: " + "; ".join(f"{n} {per_metric[n]['classification']}: {per_metric[n]['why']}" for n in critical)
    elif score is None:
        verdict, why = "inconclusive", "no judged metric had data"
    elif score >= scoring.pass_threshold:
        verdict, why = "pass", f"{share} ({score:g} ≥ pass threshold {scoring.pass_threshold:g})"
    elif score >= scoring.marginal_threshold:
        verdict, why = "inconclusive", f"{share} ({score:g}: between marginal {scoring.marginal_threshold:g} and pass {scoring.pass_threshold:g})"
    else:
        verdict, why = "failed", f"{share} ({score:g} < marginal threshold {scoring.marginal_threshold:g})"
    failing = [f"{n} {per_metric[n]['classification']}" for n in judged if n not in passed and n not in critical]
    if failing and not critical:
        why += "; not passing: " + ", ".join(failing)
    if no_data:
        why += "; no data: " + ", ".join(no_data)
    against = "baseline" if any(e["against"] == "baseline" for e in per_metric.values()) else "targets"
    breakdown = {"verdict": verdict, "why": why, "score": score, "judge": "share of metrics passing",
                 "per_metric": per_metric, "passed": passed, "judged": judged, "no_data": no_data,
                 "critical_failed": critical, "against": against,
                 "pass_threshold": scoring.pass_threshold, "marginal_threshold": scoring.marginal_threshold}
    return (score if score is not None else 0.0), breakdown, verdict
