"""Simulator: pure memory plans, failures read back by the Observer, a real server process over HTTP."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from functools import partial
from pathlib import Path

import httpx
import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS
from healing.tuning.observer import (
    GRAPH_OOM,
    KV_MAX_LEN,
    KV_NO_MEMORY,
    KV_ONE_REQUEST,
    SAMPLER_OOM,
    STARTUP_FREE_MEMORY,
    observe_text,
)
from healing.tuning.simulator import PROFILES, SimConfig, build_parser, load_profile, main, plan_memory
from healing.tuning.simulator import SimConfig as SimConfig_
from tests.conftest import subprocess_env

GIB = 1024**3


def test_seed_profile_reproduces_the_1155_mib_deficit() -> None:
    plan = plan_memory(PROFILES["seed"], SimConfig(Decimal("0.6"), log_format="0.10"))
    assert plan.failure == "D"
    assert (plan.requested_bytes - plan.free_bytes) // 2**20 == 1155
    assert plan.message == ("Free memory on device (6.07/12.0 GiB) on startup is less than desired GPU memory utilization "
                            "(0.6, 7.2 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.")
    # 0.55 would be needed and 0.50 fits, both below the actuator bound 0.60
    assert plan_memory(PROFILES["seed"], SimConfig(Decimal("0.55"), log_format="0.10")).failure == "D"
    assert plan_memory(PROFILES["seed"], SimConfig(Decimal("0.5"), max_num_seqs=8, enforce_eager=True, log_format="0.10")).ok


def test_default_profile_is_healthy_at_vllm_defaults() -> None:
    plan = plan_memory(PROFILES["default"], SimConfig(max_model_len=4096, log_format="0.10"))
    assert plan.ok and plan.message is None and plan.gpu_memory_utilization == Decimal("0.9")
    assert (plan.num_gpu_blocks, plan.kv_tokens) == (36641, 586256)
    assert round(plan.max_concurrency, 2) == 143.13
    assert plan.kv_tokens == plan.num_gpu_blocks * 16


def test_each_failure_condition() -> None:
    """The 0.10 format's arithmetic (CUDA graphs outside the budget, gmu < 1)."""
    d, tight = PROFILES["default"], PROFILES["tight"]
    SimConfig = partial(SimConfig_, log_format="0.10")  # noqa: N806 - the 0.10 format's SimConfig

    a = plan_memory(tight, SimConfig(Decimal("0.8")))
    assert a.failure == "A" and a.kv_available_bytes < 0
    assert plan_memory(tight, SimConfig(Decimal("0.9"), max_model_len=4096, max_num_seqs=16)).ok
    c = plan_memory(tight, SimConfig(Decimal("0.9")))  # 32768 tokens × 128 KiB = 4 GiB for one request
    assert c.failure == "C'" and "the estimated maximum model length is 5520." in (c.message or "")
    c2 = plan_memory(d, SimConfig(Decimal("0.22"), max_model_len=32768))
    assert c2.failure == "C'" and c2.estimated_max_len == 24752
    assert "(0.88 GiB KV cache is needed, which is larger than the available KV cache memory (0.66 GiB)" in (c2.message or "")
    e = plan_memory(d, SimConfig(max_num_seqs=1024))
    assert e.failure == "E" and e.sampler_bytes == 4 * GIB and e.sampler_bytes > e.headroom_bytes
    assert plan_memory(d, SimConfig(max_num_seqs=512)).ok
    g = plan_memory(d, SimConfig(Decimal("0.97")))
    assert g.failure == "graph" and g.message == "CUDA error: out of memory"
    assert plan_memory(d, SimConfig(Decimal("0.97"), enforce_eager=True)).failure is None
    assert plan_memory(d, SimConfig(Decimal("1.2"))).message == "GPU memory utilization must be less than 1.0. Got 1.2."
    assert plan_memory(d, SimConfig(max_model_len=40000)).failure == "J"


def test_load_profile_from_file(tmp_path: Path) -> None:
    f = tmp_path / "card.json"
    f.write_text(json.dumps({"base": "seed", "other_processes_gib": 1.0, "startup_delay_s": 0}))
    p = load_profile(str(f))
    assert p.total_gib == Decimal("12.0") and p.other_processes_gib == Decimal("1.0") and p.name == "card"
    f.write_text(json.dumps({"vram": 12}))
    with pytest.raises(ValueError, match="unknown key 'vram'"):
        load_profile(str(f))
    with pytest.raises(ValueError, match="neither a built-in profile"):
        load_profile(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("argv, cls, fix, escalate", [
    (["--profile", "seed", "--gpu-memory-utilization", "0.6"], STARTUP_FREE_MEMORY, None, True),
    (["--profile", "default", "--gpu-memory-utilization", "0.97", "--max-model-len", "4096"], GRAPH_OOM, {GMU: 0.9}, False),
    (["--profile", "tight", "--gpu-memory-utilization", "0.8", "--max-model-len", "4096"], KV_NO_MEMORY, {GMU: 0.9}, False),
    (["--profile", "default", "--gpu-memory-utilization", "0.195", "--max-model-len", "8192"], KV_ONE_REQUEST,
     {MAX_MODEL_LEN: 4096}, False),
    (["--profile", "default", "--max-num-seqs", "1024", "--max-model-len", "4096"], SAMPLER_OOM, {MAX_NUM_SEQS: 16}, False),
    (["--max-model-len", "40000"], KV_MAX_LEN, None, True),
])
def test_simulated_failures_read_back_by_the_observer(argv: list[str], cls: str, fix: dict | None, escalate: bool) -> None:
    argv = argv + ["--log-format", "0.10"]
    args = build_parser().parse_args(argv)  # guard: a healthy configuration would start serving in-process
    config = SimConfig(args.gpu_memory_utilization, args.max_num_seqs, args.max_model_len, args.enforce_eager,
                       log_format="0.10")
    assert not plan_memory(load_profile(args.profile), config).ok
    out, err = io.StringIO(), io.StringIO()
    assert main(argv + ["--startup-delay", "0"], out=out, err=err) == 1
    events = observe_text(out.getvalue() + err.getvalue())
    assert [e.event_class for e in events] == [cls]
    e = events[0]
    assert e.escalate is escalate and e.version == "0.10.2"
    if fix is not None:
        assert e.seed_fix == fix
    if cls == KV_ONE_REQUEST:
        # 0.195 × 22.05 GiB leaves 0.11 GiB of KV: vLLM estimates 4096 tokens of the 8192 asked
        assert (e.values["available_gib"], e.values["estimated_max_model_len"]) == (0.11, 4096)
    assert "Traceback (most recent call last):" in err.getvalue()


def test_the_tight_fix_really_fixes_the_simulated_server() -> None:
    out = io.StringIO()
    main(["--profile", "tight", "--gpu-memory-utilization", "0.8", "--max-model-len", "4096", "--max-num-seqs", "16",
          "--startup-delay", "0", "--log-format", "0.10"], out=out, err=out)
    [e] = observe_text(out.getvalue())
    new = Decimal(repr(e.seed_fix[GMU]))
    assert plan_memory(PROFILES["tight"], SimConfig(new, max_num_seqs=16, max_model_len=4096, log_format="0.10")).ok


def test_bad_flags_exit_2() -> None:
    err = io.StringIO()
    assert main(["--gpu-memory-utilization", "lots"], err=err) == 2
    assert main(["--profile", "no-such-profile"], err=err) == 2
    assert "neither a built-in profile" in err.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_server_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "sim.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "healing.tuning.simulator", "Qwen/Qwen2.5-1.5B-Instruct", "--port", str(port),
             "--max-model-len", "4096", "--max-num-seqs", "8", "--startup-delay", "0.2", "--stats-interval", "0.3",
             "--log-format", "0.10"],
            stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env())
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=5) as client:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if client.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "simulator did not become healthy"
                time.sleep(0.1)
            models = client.get(f"{base}/v1/models").json()
            assert models["data"][0]["id"] == "Qwen/Qwen2.5-1.5B-Instruct" and models["data"][0]["max_model_len"] == 4096
            body = {"model": "Qwen/Qwen2.5-1.5B-Instruct", "prompt": "the canary says hello", "max_tokens": 5}
            r1 = client.post(f"{base}/v1/completions", json=body).json()
            r2 = client.post(f"{base}/v1/completions", json=body).json()
            assert r1["object"] == "text_completion"
            assert r1["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
            assert r1["choices"][0]["text"] == r2["choices"][0]["text"] and len(r1["choices"][0]["text"].split()) == 5
            too_long = client.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 5000})
            assert too_long.status_code == 400 and "maximum context length is 4096 tokens" in too_long.json()["message"]
            assert client.post(f"{base}/v1/completions", json={"model": "other", "prompt": "x"}).status_code == 404
            time.sleep(0.5)  # let one stats line appear
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"Starting vLLM API server 0 on http://127.0.0.1:{port}" in text
    assert "Engine 000: Avg prompt throughput:" in text and "Shutting down FastAPI HTTP server." in text
    assert observe_text(text) == []  # a healthy log has no failures


@pytest.mark.timeout(60)
def test_failing_process_output_through_the_observer() -> None:
    res = subprocess.run([sys.executable, "-m", "healing.tuning.simulator", "--profile", "seed", "--gpu-memory-utilization",
                          "0.6", "--startup-delay", "0", "--log-format", "0.10"], capture_output=True, text=True, env=subprocess_env(), timeout=30)
    assert res.returncode == 1
    [e] = observe_text(res.stdout + res.stderr)
    assert e.event_class == STARTUP_FREE_MEMORY and e.escalate and e.seed_fix is None
    assert e.values["free_gib"] == 6.07 and e.values["total_gib"] == 12.0
    # the seed clamped its 0.55 up to 0.60 and only the canary caught it; here the bound itself escalates
    assert "gpu_memory_utilization would have to drop to 0.45, below the bound 0.6" in e.reason
    assert "other processes hold about 5.93 GiB" in e.reason
