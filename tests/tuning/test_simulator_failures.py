"""Every failure the simulator's memory model can produce, in each log format, printed by a real simulator
process and read back by the Observer: the catalogue class, the escalation, the fix and the numbers it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS
from healing.tuning.observer import observe_text
from tests.conftest import subprocess_env

ALL = ("0.10", "0.20", "0.33")
MODERN = ("0.20", "0.33")


def profile_files(root: Path) -> dict[str, str]:
    """Profiles of cards whose weights another process holds (vLLM 0.33's external weight loader)."""
    external = root / "external.json"  # 21 GiB held elsewhere ≥ ceil(0.92 × 22.05 GiB) = 20.29 GiB
    external.write_text(json.dumps({"base": "default", "external_weights_gib": 21}))
    crowded = root / "crowded.json"  # 5 GiB external + 15 GiB of other processes leave 2.05 GiB free
    crowded.write_text(json.dumps({"base": "default", "external_weights_gib": 5, "other_processes_gib": 15}))
    heavy = root / "heavy.json"  # 7 GiB of weights on the seed's card, 6.07 GiB free
    heavy.write_text(json.dumps({"base": "seed", "weights_gib": 7}))
    released = root / "released.json"  # other processes free 4 GiB while vLLM profiles (more than it consumed)
    released.write_text(json.dumps({"base": "default", "other_processes_change_gib": -4}))
    grown = root / "grown.json"  # other processes take 4 GiB after vLLM's free-memory check
    grown.write_text(json.dumps({"base": "default", "other_processes_change_gib": 4}))
    return {"external": str(external), "crowded": str(crowded), "heavy": str(heavy), "released": str(released),
            "grown": str(grown)}


# name: (formats, flags, expected class, escalate, fix, values the Observer reads)
CASES: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "gmu_above_one": (ALL, ["--gpu-memory-utilization", "1.2", "--max-model-len", "4096"]),
    "max_len_over_model": (ALL, ["--max-model-len", "40000"]),
    "batched_below_len": (ALL, ["--max-model-len", "8192", "--max-num-batched-tokens", "4096", "--no-enable-chunked-prefill"]),
    "batched_below_seqs": (ALL, ["--max-num-seqs", "64", "--max-num-batched-tokens", "32", "--max-model-len", "4096"]),
    "free_memory": (ALL, ["--profile", "seed", "--gpu-memory-utilization", "0.6"]),
    "no_kv_memory": (ALL, ["--profile", "tight", "--gpu-memory-utilization", "0.8", "--max-model-len", "4096"]),
    "one_request": (ALL, ["--gpu-memory-utilization", "0.22", "--max-model-len", "32768"]),
    "sampler": (ALL, ["--max-num-seqs", "1024", "--max-model-len", "4096"]),
    "graph_capture": (("0.10",), ["--gpu-memory-utilization", "0.97", "--max-model-len", "4096"]),
    # from 0.21 the graphs are inside the gmu budget; outside it only with --kv-cache-memory-bytes
    "graph_capture_kv_bytes": (MODERN, ["--kv-cache-memory-bytes", "19.9g", "--max-model-len", "4096"]),
    "weights_load": (MODERN, ["--profile", "{heavy}", "--gpu-memory-utilization", "0.5"]),
    "profiling_release": (ALL, ["--profile", "{released}", "--max-model-len", "4096"]),
    "kv_allocation_others_grew": (MODERN, ["--profile", "{grown}", "--max-model-len", "4096"]),
    "kv_allocation": (MODERN, ["--kv-cache-memory-bytes", "30G", "--max-model-len", "4096"]),
    "auto_fit": (MODERN, ["--profile", "tight", "--gpu-memory-utilization", "0.84", "--max-model-len", "auto"]),
    "mamba": (MODERN, ["--profile", "hybrid", "--max-model-len", "32768"]),
    "mamba_tp2": (MODERN, ["--profile", "hybrid", "--max-model-len", "32k", "-tp", "2", "--gpu-memory-utilization", "0.48"]),
    "free_memory_tp2": (("0.33",), ["--profile", "seed", "--gpu-memory-utilization", "0.6", "-tp", "2"]),
    "sampler_tp2": (("0.33",), ["--max-num-seqs", "1024", "--max-model-len", "4096", "-tp", "2"]),
    "external_weights": (("0.33",), ["--profile", "{external}", "--max-model-len", "4096"]),
    "external_free_memory": (("0.33",), ["--profile", "{crowded}", "--max-model-len", "4096"]),
}

EXPECTED: dict[str, tuple[str, bool, dict[str, float] | None, dict[str, Any]]] = {
    "gmu_above_one": ("startup_free_memory_below_request", False, {GMU: 0.9}, {"gpu_memory_utilization": 1.2}),
    "max_len_over_model": ("kv_cache_max_len_too_large", True, None, {"max_model_len": 40000,
                                                                      "derived_max_model_len": 32768}),
    "batched_below_len": ("batched_tokens_below_max_model_len", False, {MAX_MODEL_LEN: 4096},
                          {"max_num_batched_tokens": 4096, "max_model_len": 8192}),
    "batched_below_seqs": ("batched_tokens_below_max_num_seqs", False, {MAX_NUM_SEQS: 16},
                           {"max_num_batched_tokens": 32, "max_num_seqs": 64}),
    "free_memory": ("startup_free_memory_below_request", True, None,
                    {"free_gib": 6.07, "total_gib": 12.0, "gpu_memory_utilization": 0.6, "requested_gib": 7.2}),
    "no_kv_memory": ("kv_cache_no_memory", False, None, {}),
    "one_request": ("kv_cache_one_request_does_not_fit", True, None, {"max_model_len": 32768}),
    "sampler": ("sampler_warmup_oom", False, {MAX_NUM_SEQS: 16}, {"num_dummy_requests": 1024}),
    "graph_capture": ("cuda_error_oom_graph_capture", False, {GMU: 0.9}, {}),
    "graph_capture_kv_bytes": ("cuda_error_oom_graph_capture", False, {GMU: 0.9}, {}),
    "kv_allocation": ("cuda_oom_torch", True, None, {}),
    "profiling_release": ("memory_profiling_error", True, None, {"initial_free_gib": 21.75, "current_free_gib": 22.76}),
    "kv_allocation_others_grew": ("cuda_oom_torch", False, {GMU: 0.9},
                                  {"tried_gib": 15.67, "free_gib": 14.76, "other_processes_gib": 4.3}),
    # the torch OOM re-raised after vLLM's message is absorbed: one event
    "weights_load": ("model_weights_oom", True, None, {}),
    "auto_fit": ("auto_fit_max_model_len_failed", False, {GMU: 0.85}, {"gpu_memory_utilization": 0.84, "deficit_gib": 0.77}),
    "mamba": ("mamba_cache_blocks_below_max_num_seqs", False, {MAX_NUM_SEQS: 16},
              {"max_num_seqs": 1024, "mamba_cache_blocks": 585}),
    "mamba_tp2": ("mamba_cache_blocks_below_max_num_seqs", False, {MAX_NUM_SEQS: 16},
                  {"max_num_seqs": 1024, "mamba_cache_blocks": 468}),
    "free_memory_tp2": ("startup_free_memory_below_request", True, None, {"free_gib": 6.07, "total_gib": 12.0}),
    # the ranks' error re-raised by the engine as "Worker failed with error '…'": still one event
    "sampler_tp2": ("sampler_warmup_oom", False, {MAX_NUM_SEQS: 16}, {"num_dummy_requests": 1024, "cause_tried_gib": 4.0}),
    "external_weights": ("external_weights_exceed_budget", True, None,
                         {"external_gib": 21.0, "total_gib": 22.05, "gpu_memory_utilization": 0.92, "requested_gib": 20.29}),
    "external_free_memory": ("startup_free_memory_below_request", True, None,
                             {"free_gib": 2.05, "total_gib": 22.05, "requested_gib": 15.29, "external_gib": 5.0}),
}

# numbers that differ by format (the KV arithmetic and its printed rounding)
BY_FORMAT: dict[tuple[str, str], dict[str, Any]] = {
    ("one_request", "0.10"): {"available_gib": 0.66, "needed_gib": 0.88, "estimated_max_model_len": 24752},
    ("one_request", "0.20"): {"available_gib": 0.23, "needed_gib": 0.88, "estimated_max_model_len": 8640},
    ("one_request", "0.33"): {"available_gib": 0.23, "needed_gib": 0.88, "estimated_max_model_len": 8624},
    # 0.10 prints the card's size (DEBUG profiling line): the fix is computed; 0.20+ do not: one step
    ("no_kv_memory", "0.10"): {"fix": {GMU: 0.9}, "deficit_gib": 0.9, "total_gib": 15.75},
    ("no_kv_memory", "0.20"): {"fix": {GMU: 0.85}, "deficit_gib": 1.4},
    ("no_kv_memory", "0.33"): {"fix": {GMU: 0.85}, "deficit_gib": 1.4},
    ("kv_allocation", "0.20"): {"tried_gib": 30.0, "total_gib": 22.05, "free_gib": 18.76},
    ("kv_allocation", "0.33"): {"tried_gib": 30.0, "total_gib": 22.05, "free_gib": 18.76},
    ("sampler", "0.10"): {"cause_tried_gib": 4.0, "cause_free_gib": 2.67},
    ("sampler", "0.20"): {"cause_tried_gib": 4.0, "cause_free_gib": 2.66},
    ("sampler", "0.33"): {"cause_tried_gib": 4.0, "cause_free_gib": 2.66},
}

@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ALL)
def test_every_failure_read_back_by_the_observer(fmt: str, tmp_path: Path) -> None:
    files = profile_files(tmp_path)
    seen = []
    for name, (formats, argv) in CASES.items():
        if fmt not in formats:
            continue
        res = subprocess.run([sys.executable, "-m", "healing.tuning.simulator", *[a.format(**files) for a in argv],
                              "--startup-delay", "0", "--port", "0", "--log-format", fmt],
                             capture_output=True, text=True, env=subprocess_env(), timeout=30)
        assert res.returncode == 1, (name, res.stderr[-400:])
        events = observe_text(res.stdout + res.stderr)
        cls, escalate, fix, values = EXPECTED[name]
        extra = dict(BY_FORMAT.get((name, fmt), {}))
        fix = extra.pop("fix", fix)
        assert [e.event_class for e in events] == [cls], (name, fmt)
        [e] = events
        assert e.version == {"0.10": "0.10.2", "0.20": "0.20.0", "0.33": "0.33.0"}[fmt]
        assert (e.escalate, e.seed_fix) == (escalate, fix), name
        for key, value in {**values, **extra}.items():
            assert e.values[key] == value, (name, fmt, key, e.values)
        seen.append(name)
    assert len(seen) == sum(fmt in formats for formats, _ in CASES.values())


def test_the_matrix_covers_every_failure_kind_of_the_memory_model(tmp_path: Path) -> None:
    from healing.tuning.simulator import SimConfig, build_parser, load_profile, plan_memory

    files = profile_files(tmp_path)
    produced = set()
    for formats, argv in CASES.values():
        fmt = formats[-1]
        a = build_parser().parse_args([x.format(**files) for x in argv] + ["--log-format", fmt])
        plan = plan_memory(load_profile(a.profile), SimConfig(
            a.gpu_memory_utilization, a.max_num_seqs, a.max_model_len, a.enforce_eager, a.max_num_batched_tokens,
            a.kv_cache_memory_bytes, a.tensor_parallel_size, a.enable_chunked_prefill, fmt))
        produced.add(plan.failure)
    assert produced == {"I", "J", "batched_len", "batched_seqs", "external", "D''", "D", "weights", "profiling", "A",
                        "C'", "auto_fit", "kv_alloc", "graph", "mamba", "E"}
