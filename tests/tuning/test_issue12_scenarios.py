"""Issue 12's scenarios, the whole loop with real processes: the vLLM 0.33 simulator is the production
service (started from its vLLM ``--config`` file by a restart script, its log appended to one file), it
fails; ``selfheal tune run --json`` (the real CLI) reads the log, plans, pre-flights and canaries
candidates (the simulator again, 0.33 mode), applies the winner in dev mode and runs the reload command,
which restarts production from the rewritten file; ``selfheal tune watch --wait --json`` then verifies
the service for the window or rolls it back.

``run_scenario`` is also what bench/bench_tuning.py times: it records how many service starts each
heal needed (canary starts + production reloads) and how long it took from the failure appearing in
the log to the healed config serving (healthy) and to the end of the watch (verified/rolled back).
Simulated startups take ``STARTUP_S``; a real vLLM takes 30–600 s per start.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 0.2  # the simulated startup of every service start (production and canary)
VERIFY_WINDOW_S = 4.0  # tuning.verify_window_s here (default 600)
FAIL_AFTER_S = 1.0  # the rollback scenario: the promoted config's engine dies after serving this long
GMU, MAX_MODEL_LEN, MAX_NUM_SEQS = "vllm.gpu_memory_utilization", "vllm.max_model_len", "vllm.max_num_seqs"
ENGINE_FAILED = "Engine core initialization failed"  # 0.33's last line of a failed engine start
ENGINE_DIED = "EngineCore encountered a fatal error."  # 0.33's first line of an engine that died serving

# The reload command: stop the running production service, start it again from the target file with
# `--config` (as `vllm serve --config FILE`), appending to the one log. Every start is counted. With a
# fail-after time, a target that differs from the initial one stands for a config that starts but dies
# under load (the simulator's --sim-fail-after).
RESTART = """\
import os, pathlib, signal, subprocess, sys, time
target, initial, log, pidfile, counter, port, fail_after = sys.argv[1:8]
pid = pathlib.Path(pidfile)
if pid.exists():
    try:
        os.killpg(int(pid.read_text()), signal.SIGTERM)
        time.sleep(0.3)
    except ProcessLookupError:
        pass
argv = [sys.executable, "-m", "healing.tuning.simulator", "--config", target, "--host", "127.0.0.1", "--port", port,
        "--sim-watchdog-interval", "0.5", *sys.argv[8:]]
if float(fail_after) > 0 and pathlib.Path(target).read_bytes() != pathlib.Path(initial).read_bytes():
    argv += ["--sim-fail-after", fail_after]
with open(log, "a") as out:
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
pid.write_text(str(proc.pid))
with open(counter, "a") as fh:
    fh.write(f"{time.time()}\\n")
"""


@dataclass(frozen=True)
class Scenario:
    """One production failure: the GPU profile (a built-in name or overrides of one), the target file's
    flat vLLM keys, and the text of the failure the production log shows."""

    name: str
    title: str
    profile: str | Mapping[str, Any]
    target: Mapping[str, Any]
    failure: str
    fails_after_promotion: bool = False
    actuators: Mapping[str, Any] = field(default_factory=dict)  # tuning.actuators overrides (bounds)


SCENARIOS = {s.name: s for s in [
    Scenario("headroom", "KV cache < max_model_len, gmu headroom",
             {"base": "tight", "weights_gib": 10.5}, {"gpu-memory-utilization": 0.85, "max-num-seqs": 16, "max-model-len": 8192},
             "To serve at least one request with the model's max seq len (8192)"),
    Scenario("no_headroom", "KV cache < max_model_len, no gmu headroom",
             {"base": "tight", "weights_gib": 11.4}, {"gpu-memory-utilization": 0.8, "max-num-seqs": 16, "max-model-len": 8192},
             "No available memory for the cache blocks"),
    Scenario("sampler", "sampler warm-up OOM (1024 dummy requests)",
             "default", {"gpu-memory-utilization": 0.9, "max-num-seqs": 1024, "max-model-len": 4096},
             "CUDA out of memory occurred when warming up sampler with 1024 dummy requests"),
    Scenario("mamba", "hybrid model: Mamba cache blocks < max_num_seqs",
             "hybrid", {"gpu-memory-utilization": 0.92, "max-num-seqs": 1024, "max-model-len": 8192},
             "max_num_seqs (1024) exceeds available Mamba cache blocks (585)",
             # an H100 operator allows up to vLLM's default there (the built-in bounds [2, 16] are the seed's)
             actuators={MAX_NUM_SEQS: {"min": 2, "max": 1024, "step": 2}}),
    Scenario("rollback", "promotion whose service dies in the watch window",
             {"base": "tight", "weights_gib": 10.5}, {"gpu-memory-utilization": 0.85, "max-num-seqs": 16, "max-model-len": 8192},
             "To serve at least one request with the model's max seq len (8192)", fails_after_promotion=True),
    # the seed's card: 0.45 leaves the KV cache 1155 MiB short (with 0.33's graphs inside the budget), and
    # 0.6 — the bound — asks for 1155 MiB more than the resident services leave free
    Scenario("seed", "the seed's 1155 MiB scenario (12 GiB card, 5.93 GiB resident)",
             {"base": "seed", "weights_gib": 4.7979}, {"gpu-memory-utilization": 0.45, "max-num-seqs": 16, "max-model-len": 4096},
             "No available memory for the cache blocks"),
]}


@dataclass
class ScenarioResult:
    """What one pass of the loop did; times in seconds from the failure appearing in the production log."""

    scenario: Scenario
    workdir: Path
    env: dict[str, str]
    target_before: bytes
    target_after: bytes
    run: dict[str, Any]
    watch: list[dict[str, Any]]
    canary_logs: list[str]  # one log per canary start (baseline and candidates), run-N/NAME.log
    production_reloads: int
    decided_after_s: float  # `tune run` returned: promoted, applied and reloaded, or escalated
    healthy_after_s: float | None  # the promoted config answered /health 200
    settled_after_s: float | None  # the watch ended (verified or rolled back)
    died_to_rollback_s: float | None  # the rollback scenario: from the engine's death in the log to the rollback done
    log: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> dict[str, Any]:
        [outcome] = self.run["intents"]
        return outcome

    @property
    def watch_state(self) -> str | None:
        return self.watch[0]["state"] if self.watch else None

    @property
    def canary_starts(self) -> int:
        return len(self.canary_logs)

    @property
    def restarts(self) -> int:
        return self.canary_starts + self.production_reloads


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Monitor(threading.Thread):
    """Polls the production log and /health every 20 ms and notes when things first happened."""

    def __init__(self, log: Path, health: str) -> None:
        super().__init__(daemon=True)
        self.log, self.health = log, health
        self.marks: dict[str, float] = {}
        self.watch_texts: dict[str, str] = {}
        self.watch_health = False
        self._halt = threading.Event()

    def expect(self, name: str, text: str) -> None:
        self.watch_texts[name] = text

    def run(self) -> None:
        with httpx.Client(timeout=0.5) as client:
            while not self._halt.is_set():
                now = time.monotonic()
                text = self.log.read_text(errors="replace") if self.log.exists() else ""
                for name, needle in list(self.watch_texts.items()):
                    if name not in self.marks and needle in text:
                        self.marks[name] = now
                if self.watch_health and "healthy" not in self.marks:
                    try:
                        if client.get(self.health).status_code == 200:
                            self.marks["healthy"] = time.monotonic()
                    except httpx.HTTPError:
                        pass
                self._halt.wait(0.02)

    def wait_for(self, name: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while name not in self.marks:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name!r} did not happen within {timeout:g} s; log tail:\n"
                                     + (self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"))
            time.sleep(0.02)
        return self.marks[name]

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _target_text(values: Mapping[str, Any]) -> str:
    body = yaml.safe_dump(dict(values), sort_keys=False)
    return f"# production vLLM, started with: vllm serve --config vllm.yaml\nmodel: demo\n{body}"


def _cli(env: Mapping[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healing", *args], env=dict(env), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _stop_production(pidfile: Path) -> None:
    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def run_scenario(scenario: Scenario, workdir: Path, env: Mapping[str, str] | None = None) -> ScenarioResult:
    """Run one scenario in ``workdir`` (its own SQLite file, SELFHEAL_HOME and config) and measure it."""
    workdir.mkdir(parents=True, exist_ok=True)
    home, log, pidfile, counter = workdir / "home", workdir / "vllm.log", workdir / "vllm.pid", workdir / "starts"
    target, initial = workdir / "vllm.yaml", workdir / "vllm.initial.yaml"
    if isinstance(scenario.profile, str):
        profile = scenario.profile
    else:
        card = workdir / f"{scenario.name}-card.json"
        card.write_text(json.dumps({**scenario.profile, "startup_delay_s": STARTUP_S}), encoding="utf-8")
        profile = str(card)
    text = _target_text(scenario.target)
    target.write_text(text, encoding="utf-8")
    initial.write_text(text, encoding="utf-8")
    script = workdir / "restart.py"
    script.write_text(RESTART, encoding="utf-8")
    port = _free_port()
    fail_after = FAIL_AFTER_S if scenario.fails_after_promotion else 0
    sim_flags = ["--profile", profile, "--log-format", "0.33", "--startup-delay", str(STARTUP_S)]
    reload = [sys.executable, str(script), str(target), str(initial), str(log), str(pidfile), str(counter), str(port),
              str(fail_after), *sim_flags]
    health = f"http://127.0.0.1:{port}/health"
    canary = [sys.executable, "-m", "healing.tuning.simulator", "--model", "demo", *sim_flags,
              "--gpu-memory-utilization", "{vllm.gpu_memory_utilization}", "--max-num-seqs", "{vllm.max_num_seqs}",
              "--max-model-len", "{vllm.max_model_len}", "--host", "{host}", "--port", "{port}"]
    config = {"tuning": {
        "mode": "dev", "actuators": dict(scenario.actuators), "target_config": str(target), "reload_command": reload, "verify_window_s": VERIFY_WINDOW_S,
        "log_sources": [{"path": str(log), "subsystem": "vllm"}], "gpu_profile": profile,
        "preflight": {"gpu_source": "profile"},
        "rate_limits": {"max_runs": 3, "cooldown_s": 0, "backoff_base_s": 0},
        "canary": {"command": canary, "start_timeout_s": 30, "stop_grace_s": 3,
                   "probe": {"requests": 4, "concurrency": 2, "max_tokens": 8, "timeout_s": 10}},
        "watch": {"poll_s": 0.2, "health_url": health, "metrics_url": f"http://127.0.0.1:{port}/metrics",
                  "unhealthy_probes": 2, "start_timeout_s": 30},
    }}
    (workdir / "selfheal.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    run_env = {**(env or os.environ), "PYTHONPATH": str(ROOT), "SELFHEAL_HOME": str(home),
               "SELFHEAL_CONFIG": str(workdir / "selfheal.yaml"),
               "SELFHEAL_DATABASE_URL": f"sqlite:///{workdir / 'selfheal.db'}"}
    run_env.pop("KLR_SELF_HEALING_MODE", None)
    run_env.pop("SELFHEAL_MODE", None)

    monitor = _Monitor(log, health)
    monitor.expect("failure", scenario.failure)
    monitor.expect("failed", ENGINE_FAILED)
    monitor.start()
    try:
        subprocess.run(reload, check=True, env=run_env, cwd=ROOT, timeout=30)  # production starts and fails
        failed_at = monitor.wait_for("failure", 30)
        monitor.wait_for("failed", 30)
        time.sleep(0.2)  # the rest of the traceback
        monitor.watch_health = True
        if scenario.fails_after_promotion:
            monitor.expect("died", ENGINE_DIED)
        ran = _cli(run_env, "tune", "run", "--json")
        if ran.returncode != 0:
            raise AssertionError(f"tune run exited {ran.returncode}: {ran.stderr[-2000:]}")
        run = json.loads(ran.stdout)
        decided_at = time.monotonic()
        watch: list[dict[str, Any]] = []
        if run["intents"] and run["intents"][0].get("decision") == "applied":
            watched = _cli(run_env, "tune", "watch", "--wait", "--json")
            if watched.returncode not in (0, 2):
                raise AssertionError(f"tune watch exited {watched.returncode}: {watched.stderr[-2000:]}")
            watch = json.loads(watched.stdout)
        settled_at = time.monotonic()
        time.sleep(0.1)
    finally:
        monitor.stop()
        _stop_production(pidfile)
    starts = len(counter.read_text().splitlines()) if counter.exists() else 0
    canaries = sorted(str(p.relative_to(home / "tuning" / "canary")) for p in (home / "tuning" / "canary").glob("run-*/*.log"))
    healthy = monitor.marks.get("healthy")
    died = monitor.marks.get("died")
    return ScenarioResult(
        scenario, workdir, run_env, text.encode(), target.read_bytes(), run, watch, canaries, starts - 1,
        decided_at - failed_at, None if healthy is None else healthy - failed_at, settled_at - failed_at if watch else None,
        settled_at - died if (died is not None and watch and watch[0]["state"] == "rolled_back") else None,
        log.read_text(errors="replace"))


# --------------------------------------------------------------------------- the tests

slow = pytest.mark.slow


@pytest.fixture
def db_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """In-process reads of the scenario's SQLite file (the CLI processes write it)."""
    from storage.engine import dispose_engines

    workdir = tmp_path / "loop"
    dispose_engines()
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", f"sqlite:///{workdir / 'selfheal.db'}")
    yield workdir
    dispose_engines()


def _rows(model: type) -> list[dict[str, Any]]:
    from sqlmodel import select

    from storage.engine import session_scope

    with session_scope(write=False) as session:
        return [row.model_dump() for row in session.exec(select(model).order_by(model.id))]


def _target_values(result: ScenarioResult) -> dict[str, Any]:
    return yaml.safe_load(result.target_after)


def _last_start_args(result: ScenarioResult) -> dict[str, Any]:
    """The engine flags of production's latest start, from its `non-default args: {…}` line."""
    return ast.literal_eval(result.log.rsplit("non-default args: ", 1)[1].split("\n", 1)[0])


def _runs_the_file(result: ScenarioResult) -> None:
    """Production's latest start ran with exactly the target file's values (it reads the file, as vLLM does)."""
    values = _target_values(result)
    args = _last_start_args(result)
    keys = ("gpu-memory-utilization", "max-num-seqs", "max-model-len")
    # vLLM lists only values that differ from its defaults: 0.92 is 0.33's gpu_memory_utilization default
    ran = {k: args.get(k.replace("-", "_"), 0.92 if k == "gpu-memory-utilization" else None) for k in keys}
    assert ran == {k: values[k] for k in keys}


def _healed(result: ScenarioResult) -> None:
    """Applied, production restarted once from the new file, healthy, and verified by the watch."""
    outcome = result.outcome
    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "applied"), outcome
    assert result.production_reloads == 1
    assert result.healthy_after_s is not None, result.log[-3000:]
    [watch] = result.watch
    assert (watch["promotion_id"], watch["state"]) == (outcome["promotion_id"], "verified"), watch
    # the new start is the last one in the log and it serves: no failure after it
    last_start = result.log.rsplit("non-default args", 1)[1]
    assert "Starting vLLM server on http://127.0.0.1:" in last_start and "Traceback" not in last_start
    _runs_the_file(result)


@slow
def test_headroom_gmu_is_raised_and_max_model_len_kept(db_env: Path) -> None:
    result = run_scenario(SCENARIOS["headroom"], db_env)

    _healed(result)
    ran = [c for c in result.outcome["candidates"] if c.get("verdict")]
    assert [(c["rank"], c["params"], c["verdict"]) for c in ran] == [(1, {GMU: 0.9}, "pass")]
    assert ran[0]["why"] == "keeps max_model_len 8192; raises gpu_memory_utilization 0.85→0.9 (+0.79 GiB of the GPU)"
    values = _target_values(result)
    assert (values["gpu-memory-utilization"], values["max-model-len"], values["max-num-seqs"]) == (0.9, 8192, 16)
    # only the value moved: the comment, the model and the order are the operator's
    assert result.target_after == result.target_before.replace(b"gpu-memory-utilization: 0.85", b"gpu-memory-utilization: 0.9")
    assert result.canary_logs == ["run-1/candidate-1.log"]


@slow
def test_no_headroom_the_two_parameter_candidate_wins(db_env: Path) -> None:
    from storage.models import TuningCandidate

    result = run_scenario(SCENARIOS["no_headroom"], db_env)

    _healed(result)
    first, second = result.outcome["candidates"]
    assert (first["rank"], first["params"], first["preflight_ok"], first["verdict"]) == (
        1, {GMU: 0.9, MAX_MODEL_LEN: 5120}, True, "pass")
    assert first["why"] == ("raises gpu_memory_utilization 0.8→0.9 (+1.58 GiB of the GPU); cuts max_model_len 8192→5120: "
                            "gives up 3,072 tokens of context (38%)")
    assert (second["rank"], second["params"], second["preflight_ok"], second.get("verdict")) == (2, {GMU: 0.9}, False, None)
    assert second["preflight_reason"].endswith("− one null block of 2.00 MiB): 2,720 tokens short (profile no_headroom-card)")
    values = _target_values(result)
    assert (values["gpu-memory-utilization"], values["max-model-len"]) == (0.9, 5120)
    assert result.canary_logs == ["run-1/candidate-1.log"]  # the rejected single-parameter candidate never started
    # rank and why are stored with the candidate
    origins = [r["score_breakdown"]["origin"] for r in _rows(TuningCandidate)]
    assert origins[0] == ("memory_and_length (rank 1): raises gpu_memory_utilization 0.8→0.9 (+1.58 GiB of the GPU); "
                          "cuts max_model_len 8192→5120: gives up 3,072 tokens of context (38%)")


@slow
def test_sampler_oom_lowers_max_num_seqs(db_env: Path) -> None:
    result = run_scenario(SCENARIOS["sampler"], db_env)

    _healed(result)
    first = result.outcome["candidates"][0]
    assert (first["rank"], first["params"], first["uncapped_targets"], first["verdict"]) == (
        1, {MAX_NUM_SEQS: 16}, {MAX_NUM_SEQS: 512}, "pass")  # half the dummy requests, clamped to the bound 16
    assert first["why"] == "lowers max_num_seqs 1024→16: 1008 fewer concurrent sequences"
    assert [c.get("verdict") for c in result.outcome["candidates"]] == ["pass", None, None]
    values = _target_values(result)
    assert (values["max-num-seqs"], values["gpu-memory-utilization"], values["max-model-len"]) == (16, 0.9, 4096)
    # pre-flight cannot see the sampler's memory: the current config ran as the baseline (and failed) first
    assert result.canary_logs == ["run-1/baseline.log", "run-1/candidate-1.log"]
    assert "CUDA out of memory occurred when warming up sampler" in (
        result.workdir / "home" / "tuning" / "canary" / "run-1" / "baseline.log").read_text()


@slow
def test_mamba_blocks_lower_max_num_seqs(db_env: Path) -> None:
    result = run_scenario(SCENARIOS["mamba"], db_env)

    _healed(result)
    first = result.outcome["candidates"][0]
    # "lower max_num_seqs to at most 585": the largest value on the step-2 grid, the least concurrency given up
    assert (first["rank"], first["params"], first["verdict"]) == (1, {MAX_NUM_SEQS: 584}, "pass")
    assert first["why"] == "lowers max_num_seqs 1024→584: 440 fewer concurrent sequences"
    assert [c["params"] for c in result.outcome["candidates"][1:]] == [{MAX_NUM_SEQS: 582}, {MAX_NUM_SEQS: 580}]
    values = _target_values(result)
    assert (values["max-num-seqs"], values["gpu-memory-utilization"], values["max-model-len"]) == (584, 0.92, 8192)
    assert result.canary_logs == ["run-1/baseline.log", "run-1/candidate-1.log"]  # the Mamba blocks: not pre-flighted


@slow
def test_a_promotion_that_dies_in_the_watch_window_is_rolled_back(db_env: Path) -> None:
    from storage.models import Alert, Promotion

    result = run_scenario(SCENARIOS["rollback"], db_env)

    outcome = result.outcome
    assert (outcome["outcome"], outcome["decision"]) == ("CONFIG_TUNED", "applied")
    [watch] = result.watch
    assert (watch["promotion_id"], watch["state"]) == (outcome["promotion_id"], "rolled_back")
    assert watch["reason"].startswith(f"cuda_oom_torch in {result.workdir / 'vllm.log'}: "), watch["reason"]
    assert result.target_after == result.target_before  # byte for byte
    # the reload after the restore started the old values again (the promoted 0.9 ran once, in between)
    assert _last_start_args(result)["gpu_memory_utilization"] == 0.85
    assert result.log.count("'gpu_memory_utilization': 0.9,") == 1
    [promo] = _rows(Promotion)
    assert (promo["id"], promo["status"], promo["reason"]) == (outcome["promotion_id"], "rolled_back",
                                                               f"watch failed: {watch['reason']}")
    assert [(a["kind"], a["severity"]) for a in _rows(Alert)] == [("tuning_rollback", "critical")]
    assert result.production_reloads == 2  # the apply's and the rollback's
    assert result.canary_logs == ["run-1/candidate-1.log"]
    assert result.died_to_rollback_s is not None and result.died_to_rollback_s < 10


@slow
def test_the_seeds_1155_mib_scenario_promotes_nothing(db_env: Path) -> None:
    from storage.models import Alert, Promotion

    result = run_scenario(SCENARIOS["seed"], db_env)

    outcome = result.outcome
    assert (outcome["outcome"], outcome["decision"]) == ("ESCALATED", "preflight_rejected_all"), outcome
    assert [c["params"] for c in outcome["candidates"]] == [{GMU: 0.6}, {GMU: 0.65}, {GMU: 0.7}]
    assert outcome["candidates"][0]["preflight_reason"] == (
        "gpu_memory_utilization 0.6 asks for 7.20 GiB of the 12.00 GiB GPU, but resident services hold 5.93 GiB and "
        "leave 6.07 GiB: 1155 MiB short (profile seed-card)")
    assert "1155 MiB short" in outcome["reason"]
    # what production printed: 1.13 GiB (1155 MiB) of KV cache missing at 0.45, with 0.33's graph estimate inside
    assert "Estimated CUDA graph memory: 0.43 GiB total" in result.log
    assert "Available KV cache memory: -1.13 GiB" in result.log
    assert (result.canary_logs, result.production_reloads, result.watch) == ([], 0, [])
    assert result.target_after == result.target_before
    assert _rows(Promotion) == []
    [alert] = _rows(Alert)
    assert (alert["kind"], alert["reason"]) == ("tuning_escalation", "preflight_rejected_all")


@pytest.mark.parametrize(("error_class", "values", "wanted"), [
    ("mamba_cache_blocks_below_max_num_seqs", {"max_num_seqs": 1024, "mamba_cache_blocks": 585}, 584),
    ("batched_tokens_below_max_num_seqs", {"max_num_seqs": 1024, "max_num_batched_tokens": 101}, 100),
])
def test_the_recorded_uncapped_target_of_a_seqs_ceiling_is_the_printed_ceiling(error_class: str, values: dict[str, int],
                                                                                wanted: int) -> None:
    """With the built-in bounds [2, 16] the fix is clamped to 16; what the arithmetic wanted is the printed
    ceiling floored to the grid (was one step below the running 1024: 1022)."""
    from decimal import Decimal

    from healing.tuning.actuators import default_settings
    from healing.tuning.candidates import generate_candidates

    intent = {"error_class": error_class, "seed_fix": {MAX_NUM_SEQS: 16}, "values": values}
    current = {GMU: Decimal("0.92"), MAX_NUM_SEQS: Decimal(1024), MAX_MODEL_LEN: Decimal(8192)}
    first = generate_candidates(intent, current, default_settings())[0]
    assert (first.params, first.uncapped) == ({MAX_NUM_SEQS: 16}, {MAX_NUM_SEQS: wanted})
