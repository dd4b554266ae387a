"""Pure parts of the orchestration: candidates, pre-flight, config parsing, argv templates (scoring: test_canary_judge.py)."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from healing.errors import ConfigError
from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, default_settings
from healing.tuning.canary import (
    TemplateError,
    mask_argv,
    missing_placeholders,
    render_argv,
)
from healing.tuning.candidates import generate_candidates
from healing.tuning.preflight import GpuMemory, check_candidate, from_message, from_nvidia_smi, gpu_memory
from healing.tuning.runner_config import GpuProfileSettings, parse_runner_settings

D = Decimal
SETTINGS = default_settings()


def _params(cands: list) -> list[tuple[dict, dict, str]]:
    return [(c.params, c.uncapped, c.origin) for c in cands]


# --------------------------------------------------------------------------- candidates

def test_seed_first_then_steps_in_the_safe_direction() -> None:
    intent = {"error_class": "kv_cache_no_memory", "seed_fix": {GMU: 0.6},
              "values": {"gpu_memory_utilization": 0.45, "target_gpu_memory_utilization": 0.5446}}
    cands = generate_candidates(intent, {GMU: D("0.45")}, SETTINGS, max_candidates=3)
    assert _params(cands) == [({GMU: 0.6}, {GMU: 0.55}, "seed_fix"), ({GMU: 0.65}, {GMU: 0.65}, "grid"),
                              ({GMU: 0.7}, {GMU: 0.7}, "grid")]


def test_lowering_stops_at_the_bound_and_the_secondary_parameter_combines() -> None:
    # sampler OOM with 256 dummy requests: halve → 128, clamped to 16; secondary: lower gmu one step.
    # Ranked by cost: one parameter before two, then fewer sequences given up.
    intent = {"error_class": "sampler_warmup_oom", "seed_fix": {MAX_NUM_SEQS: 16}, "values": {"num_dummy_requests": 256}}
    current = {GMU: D("0.9"), MAX_NUM_SEQS: D(256)}
    cands = generate_candidates(intent, current, SETTINGS, max_candidates=4)
    assert _params(cands) == [
        ({MAX_NUM_SEQS: 16}, {MAX_NUM_SEQS: 128}, "seed_fix"),
        ({MAX_NUM_SEQS: 14}, {MAX_NUM_SEQS: 14}, "grid"),
        ({MAX_NUM_SEQS: 12}, {MAX_NUM_SEQS: 12}, "grid"),
        ({MAX_NUM_SEQS: 16, GMU: 0.85}, {MAX_NUM_SEQS: 128, GMU: 0.85}, "grid"),
    ]
    assert [c.rank for c in cands] == [1, 2, 3, 4]
    assert cands[0].why == "lowers max_num_seqs 256→16: 240 fewer concurrent sequences"
    assert cands[3].stored_origin() == ("grid (rank 4): lowers gpu_memory_utilization 0.9→0.85; "
                                        "lowers max_num_seqs 256→16: 240 fewer concurrent sequences")
    assert all(len(c.params) <= 2 for c in cands)


def test_alternatives_follow_the_seed_and_max_params_is_respected() -> None:
    intent = {"error_class": "kv_cache_one_request_does_not_fit", "seed_fix": {MAX_MODEL_LEN: 5120},
              "values": {"max_model_len": 8192, "estimated_max_model_len": 5520, "_alternatives": [{GMU: 0.95}, {GMU: 0.85}]}}
    current = {GMU: D("0.8"), MAX_NUM_SEQS: D(16), MAX_MODEL_LEN: D(8192)}
    cands = generate_candidates(intent, current, SETTINGS, max_candidates=4)
    # 0.95 is out of bounds and dropped; the grid combines the seed with gmu one step up. Without a
    # pre-flight, cost alone ranks: keeping the context first, then the least context given up.
    assert _params(cands) == [
        ({GMU: 0.85}, {GMU: 0.85}, "alternative"),
        ({MAX_MODEL_LEN: 5120}, {MAX_MODEL_LEN: 5120}, "seed_fix"),
        ({MAX_MODEL_LEN: 5120, GMU: 0.85}, {MAX_MODEL_LEN: 5120, GMU: 0.85}, "grid"),
        ({MAX_MODEL_LEN: 4608}, {MAX_MODEL_LEN: 4608}, "grid"),
    ]
    assert [c.why for c in cands[:2]] == ["keeps max_model_len 8192; raises gpu_memory_utilization 0.8→0.85",
                                          "cuts max_model_len 8192→5120 alone: gives up 3,072 tokens of context (38%)"]
    one = generate_candidates(intent, current, SETTINGS.__class__(SETTINGS.actuators, max_params_per_candidate=1), 6)
    assert all(len(c.params) == 1 for c in one)


def test_a_grid_without_seed_starts_from_a_running_value_outside_the_bounds() -> None:
    intent = {"error_class": "cuda_oom_torch", "seed_fix": None, "values": {}}
    cands = generate_candidates(intent, {GMU: D("0.95"), MAX_NUM_SEQS: D(256)}, SETTINGS, max_candidates=3)
    # the grid's mix (one step, the step with the secondary parameter, a second step), ranked by cost:
    # giving back KV cache (gmu lower) before giving up 240 concurrent sequences
    assert _params(cands) == [({GMU: 0.9}, {GMU: 0.9}, "grid"), ({GMU: 0.85}, {GMU: 0.85}, "grid"),
                              ({GMU: 0.9, MAX_NUM_SEQS: 16}, {GMU: 0.9, MAX_NUM_SEQS: 254}, "grid")]
    assert generate_candidates({"error_class": "memory_profiling_error", "values": {}}, {GMU: D("0.9")}, SETTINGS) == []
    # at the bound already: nothing to try
    assert generate_candidates({"error_class": "kv_cache_no_memory", "values": {}}, {GMU: D("0.9")}, SETTINGS) == []


# --------------------------------------------------------------------------- pre-flight

SEED_CARD = GpuMemory(D("12.0"), D("5.928"), D("5.2279"), D("1.30"), "profile seed")


def test_preflight_reasons_cite_the_numbers() -> None:
    r = check_candidate({GMU: 0.6}, {}, SEED_CARD)
    assert r == (r.__class__(False, "gpu_memory_utilization 0.6 asks for 7.20 GiB of the 12.00 GiB GPU, but resident services "
                                    "hold 5.93 GiB and leave 6.07 GiB: 1155 MiB short (profile seed)"))
    ok = check_candidate({MAX_MODEL_LEN: 2048}, {GMU: D("0.5")}, GpuMemory(D("12"), D("5.928"), D("2.89"), D("1.3"), "nvml"))
    assert ok.ok and ok.reason == "fits: 6.00 of 6.07 GiB free, KV cache budget 1.81 GiB (nvml)"
    no_kv = check_candidate({GMU: 0.5}, {}, SEED_CARD)
    assert not no_kv.ok and no_kv.reason.endswith("+ activation/overhead 1.30 GiB leave no KV cache (-0.53 GiB) (profile seed)")
    margin = check_candidate({GMU: 0.5}, {}, GpuMemory(D("12"), D("5.928"), None, None, "message"), D("0.1"))
    assert not margin.ok and margin.reason.endswith("leave 5.97 GiB minus a margin of 0.10 GiB: 28 MiB short (message)")
    assert check_candidate({GMU: 0.6}, {}, None).ok


def test_gpu_memory_sources_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = GpuProfileSettings(D("12"), D("5.928"), D("2.89"), D("1.3"), "seed")
    smi = GpuMemory(D("24"), D("1"), None, None, "nvidia-smi")
    got = gpu_memory("auto", {}, profile, nvml=lambda: None, smi=lambda: smi)
    assert (got.source, got.total_gib, got.weights_gib) == ("nvidia-smi", D("24"), D("2.89"))  # profile supplies the model
    msg = gpu_memory("auto", {"free_gib": 6.07, "total_gib": 12.0}, profile, nvml=lambda: None, smi=lambda: None)
    assert (msg.source, msg.resident_gib) == ("message", D("5.93"))
    assert gpu_memory("auto", {}, profile, nvml=lambda: None, smi=lambda: None).source == "profile seed"
    assert gpu_memory("profile", {"free_gib": 1, "total_gib": 2}, profile, nvml=lambda: smi).source == "profile seed"
    assert gpu_memory("message", {}, None) is None
    # PyTorch OOM: the failing process's own memory is not resident
    torch = from_message({"total_gib": 22.05, "free_gib": 0.5, "process_gib": 20.0})
    assert torch is not None and torch.resident_gib == D("1.55")


def test_nvidia_smi_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("healing.tuning.preflight.shutil.which", lambda name: "/usr/bin/nvidia-smi")

    def fake(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert argv[1:] == ["--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"]
        return subprocess.CompletedProcess(argv, 0, "12288, 6070\n", "")

    got = from_nvidia_smi(run=fake)
    assert got is not None and (got.total_gib, got.resident_gib.quantize(D("0.0001"))) == (D(12), D("5.9277"))
    assert from_nvidia_smi(run=lambda argv, **kw: subprocess.CompletedProcess(argv, 9, "", "no devices")) is None
    monkeypatch.setattr("healing.tuning.preflight.shutil.which", lambda name: None)
    assert from_nvidia_smi(run=fake) is None


# --------------------------------------------------------------------------- config and templates

def test_a_shell_string_template_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"tuning.canary.command must be an argv list .* not a shell string"):
        parse_runner_settings({"canary": {"command": "python -m healing.tuning.simulator --port {port}"}})
    with pytest.raises(ConfigError, match=r"tuning.reload_command must be an argv list"):
        parse_runner_settings({"reload_command": "systemctl reload vllm"})
    with pytest.raises(ConfigError, match=r"unknown placeholder \{vllm.swap_space\}"):
        parse_runner_settings({"canary": {"command": ["vllm", "--swap-space", "{vllm.swap_space}"]}})
    with pytest.raises(ConfigError, match=r"tuning.canary.command\[1\] must be a string"):
        parse_runner_settings({"canary": {"command": ["vllm", {"a": 1}]}})


@pytest.mark.parametrize("section, message", [
    ({"rate_limits": {"max_runs": -1}}, "tuning.rate_limits.max_runs must be ≥ 0"),
    ({"rate_limits": {"per_day": 3}}, "tuning.rate_limits has unknown key(s) per_day"),
    ({"scoring": {"pass_threshold": 0.5, "marginal_threshold": 0.7}}, "marginal_threshold must not exceed pass_threshold"),
    ({"preflight": {"gpu_source": "rocm"}}, "tuning.preflight.gpu_source must be one of auto, nvml"),
    ({"gpu_profile": {"total_gib": 8, "resident_gib": 9}}, "resident_gib must not exceed total_gib"),
    ({"gpu_profile": "no-such-card"}, "tuning.gpu_profile: 'no-such-card' is neither a built-in profile"),
    ({"log_sources": "/var/log/vllm.log"}, "tuning.log_sources must be a list"),
    ({"log_sources": [{"path": "/tmp/a.log", "subsystem": "v" * 65}]},
     "tuning.log_sources[0].subsystem must be 1-64 letters, digits, '.', '_' or '-', got 'vvv"),
    ({"log_sources": [{"path": "/tmp/a.log", "subsystem": "vllm prod"}]},
     "tuning.log_sources[0].subsystem must be 1-64 letters, digits, '.', '_' or '-', got 'vllm prod'"),
    ({"promotion_ttl_s": "soon"}, "tuning.promotion_ttl_s must be a number"),
])
def test_config_errors_name_the_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_runner_settings(section)
    assert message in str(info.value)


def test_defaults_and_builtin_gpu_profile() -> None:
    r = parse_runner_settings({"gpu_profile": "seed", "log_sources": ["/tmp/a.log", {"path": "/tmp/b.log", "subsystem": "vllm2"}]})
    assert r.limits().max_runs == 3 and r.limits().cooldown_s == 21600 and r.promotion_ttl_s == 86400
    assert r.gpu_profile == GpuProfileSettings(D("12.0"), D("5.928"), D("2.89"), D("1.30"), "seed", kv_bytes_per_token=28672,
                                               model_max_len=32768, graph_gib=D("0.43"), block_size=16,
                                               graph_in_budget=r.gpu_profile.graph_in_budget, vllm_version=r.gpu_profile.vllm_version)
    assert r.canary_shares_gpu is False
    assert [(str(s.path), s.subsystem) for s in r.log_sources] == [("/tmp/a.log", "vllm"), ("/tmp/b.log", "vllm2")]


def test_render_argv_and_missing_placeholders() -> None:
    canary = parse_runner_settings({"canary": {"command": ["{python}", "-m", "sim", "--gpu-memory-utilization",
                                                           "{vllm.gpu_memory_utilization}", "--port", "{port}",
                                                           "--bind={host}:{port}"]}}).canary
    argv = render_argv(canary, {GMU: D("0.60"), MAX_NUM_SEQS: D(16)}, 8123, SETTINGS)
    assert argv[1:] == ["-m", "sim", "--gpu-memory-utilization", "0.6", "--port", "8123", "--bind=127.0.0.1:8123"]
    assert missing_placeholders(canary, {GMU: 0.7, MAX_NUM_SEQS: 8}) == [MAX_NUM_SEQS]
    with pytest.raises(TemplateError, match=r"no value for \{vllm.gpu_memory_utilization\}"):
        render_argv(canary, {}, 1, SETTINGS)


def test_mask_argv_hides_secrets_only() -> None:
    assert mask_argv(["vllm", "serve", "m", "--api-key", "s3cret", "--hf-token=abc", "--port", "8000", "--max-num-seqs", "8"]) == [
        "vllm", "serve", "m", "--api-key", "***", "--hf-token=***", "--port", "8000", "--max-num-seqs", "8"]


def test_target_config_is_a_path(tmp_path: Path) -> None:
    r = parse_runner_settings({"target_config": str(tmp_path / "v.yaml")})
    assert r.target_config == tmp_path / "v.yaml"
