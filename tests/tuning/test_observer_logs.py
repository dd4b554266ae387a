"""Realistic multi-line logs: one event per failure, context lines feed the fix, soft signals, garbage."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healing.errors import InputError
from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS, parse_tuning_section
from healing.tuning.observer import (
    GRAPH_OOM,
    KV_NO_MEMORY,
    PREEMPTION,
    PROFILING_ERROR,
    SAMPLER_OOM,
    STARTUP_FREE_MEMORY,
    TORCH_OOM,
    Observer,
    observe_file,
    observe_lines,
    observe_text,
    parse_current,
)

A_MSG = "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
D_MSG = ("Free memory on device (5.93/11.76 GiB) on startup is less than desired GPU memory utilization (0.6, 7.06 GiB). "
         "Decrease GPU memory utilization or reduce GPU memory used by other processes.")


def engine_failure(prefix: str, frames: list[tuple[str, str]], exc: str) -> list[str]:
    """A 0.10.2 EngineCore failure: logged with full prefixes, then the raw process traceback again."""
    tb = ["Traceback (most recent call last):"]
    for func, code in frames:
        tb += [f'  File "/usr/lib/python3.12/site-packages/vllm/v1/worker/gpu_worker.py", line 10, in {func}', f"    {code}"]
    tb.append(exc)
    logged = [f"{prefix} ERROR 11-23 10:20:40 [core.py:718] EngineCore failed to start."]
    logged += [f"{prefix} ERROR 11-23 10:20:40 [core.py:718] {t}" for t in tb]
    raw = [f"{prefix} Process EngineCore_DP0:"] + [f"{prefix} {t}" for t in tb]
    return logged + raw


def test_v0102_startup_failure_logged_and_raw_is_one_event_at_the_first_final_line() -> None:
    p = "(EngineCore_DP0 pid=17374)"
    lines = ["(APIServer pid=17300) INFO 11-23 10:20:32 [api_server.py:1896] vLLM API server version 0.10.2"]
    lines += engine_failure(p, [("run_engine_core", "engine_core = EngineCoreProc(*args, **kwargs)"),
                                ("init_device", "raise ValueError(")], "ValueError: " + D_MSG)
    lines += ["(APIServer pid=17300) Traceback (most recent call last):",
              "(APIServer pid=17300) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"]
    [e] = observe_lines(lines)
    assert e.event_class == STARTUP_FREE_MEMORY and e.version == "0.10.2"
    assert e.line == 8  # the first "ValueError: Free memory …" line
    assert e.escalate is True and e.seed_fix is None
    assert e.values == {"free_gib": 5.93, "total_gib": 11.76, "gpu_memory_utilization": 0.6, "requested_gib": 7.06,
                        "target_gpu_memory_utilization": 0.4843}
    assert "other processes hold about 5.83 GiB" in e.reason


def test_raise_source_line_with_the_message_and_final_line_give_one_event() -> None:
    lines = [
        "ERROR 04-30 10:20:36 [core.py:396] Traceback (most recent call last):",
        'ERROR 04-30 10:20:36 [core.py:396]   File "/vllm/v1/core/kv_cache_utils.py", line 528, in check_enough_kv_cache_memory',
        'ERROR 04-30 10:20:36 [core.py:396]     raise ValueError("No available memory for the cache blocks. "',
        "ERROR 04-30 10:20:36 [core.py:396] ValueError: " + A_MSG,
    ]
    [e] = observe_lines(lines, current={GMU: 0.8})
    assert (e.event_class, e.line, e.seed_fix) == (KV_NO_MEMORY, 4, {GMU: 0.85})


def test_only_the_source_line_still_yields_the_event() -> None:
    [e] = observe_lines(['  File "/vllm/worker/worker.py", line 1, in raise_if_cache_size_invalid',
                         '    raise ValueError("No available memory for the cache blocks. "'], current={GMU: 0.8})
    assert (e.event_class, e.line) == (KV_NO_MEMORY, 2)


def test_one_failure_per_worker_rank_with_docker_prefixes_is_one_event() -> None:
    lines = ["vllm-1  | INFO 04-30 10:20:00 [api_server.py:1043] vLLM API server version 0.8.5"]
    for rank in (0, 1, 2, 3):
        p = f"vllm-1  | (VllmWorker rank={rank} pid={100 + rank})"
        lines += [f"{p} ERROR 04-30 10:20:36 [multiproc_executor.py:470] WorkerProc failed to start.",
                  f"{p} ERROR 04-30 10:20:36 [multiproc_executor.py:470] Traceback (most recent call last):",
                  f'{p} ERROR 04-30 10:20:36 [multiproc_executor.py:470]   File "/vllm/v1/worker/gpu_model_runner.py", line 1, in _dummy_sampler_run',
                  f"{p} ERROR 04-30 10:20:36 [multiproc_executor.py:470]     raise RuntimeError(",
                  f"{p} ERROR 04-30 10:20:36 [multiproc_executor.py:470] RuntimeError: CUDA out of memory occurred when "
                  "warming up sampler with 256 dummy requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` "
                  "when initializing the engine."]
    [e] = observe_lines(lines)
    assert e.event_class == SAMPLER_OOM and e.line == 6 and e.version == "0.8.5"
    # 256 halves to 128, above the bound 16: clamped to the bound (a lowering, so still the safe side)
    assert e.seed_fix == {MAX_NUM_SEQS: 16}


def test_ray_ranks_with_torch_oom_of_different_numbers_are_one_event() -> None:
    lines = []
    for rank, free in ((0, "6.25 MiB"), (1, "8.50 MiB")):
        p = f"(RayWorkerWrapper pid={200 + rank}, ip=10.0.0.{rank + 2}) [rank{rank}]:"
        lines += [f"{p} Traceback (most recent call last):",
                  f'{p}   File "/vllm/worker/model_runner.py", line 1, in execute_model',
                  f"{p}     hidden = model(x)",
                  f"{p} torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU {rank} has a total "
                  f"capacity of 23.68 GiB of which {free} is free. Including non-PyTorch memory, this process has 23.66 GiB "
                  "memory in use."]
    [e] = observe_lines(lines, current={GMU: 0.9})
    assert e.event_class == TORCH_OOM and e.line == 4 and e.values["gpu"] == 0
    assert e.seed_fix == {GMU: 0.85}


def test_sampler_oom_absorbs_the_chained_pytorch_oom_in_every_copy() -> None:
    torch_line = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total capacity of "
                  "22.05 GiB of which 2.67 GiB is free. Including non-PyTorch memory, this process has 19.08 GiB memory in use.")
    e_line = ("RuntimeError: CUDA out of memory occurred when warming up sampler with 1024 dummy requests. Please try "
              "lowering `max_num_seqs` or `gpu_memory_utilization` when initializing the engine.")
    block = ["Traceback (most recent call last):", '  File "/vllm/v1/sample/sampler.py", line 95, in forward',
             "    logits = self.apply_temperature(logits)", torch_line, "",
             "The above exception was the direct cause of the following exception:", "",
             "Traceback (most recent call last):", '  File "/vllm/v1/worker/gpu_model_runner.py", line 2681, in _dummy_sampler_run',
             "    raise RuntimeError(", e_line]
    p = "(EngineCore_DP0 pid=5)"
    lines = [f"{p} ERROR 11-23 10:20:40 [core.py:718] {t}" for t in block] + [f"{p} {t}" for t in block]
    [e] = observe_lines(lines)
    assert e.event_class == SAMPLER_OOM and e.line == 11
    assert e.seed_fix == {MAX_NUM_SEQS: 16}
    assert e.values["cause_tried_gib"] == 4.0 and e.values["cause_free_gib"] == 2.67


def test_cuda_error_during_graph_capture_is_told_apart_by_the_traceback() -> None:
    tb = ["Traceback (most recent call last):",
          '  File "/vllm/v1/worker/gpu_model_runner.py", line 3062, in capture_model',
          "    self._capture_cudagraphs(",
          '  File "/vllm/compilation/cuda_graph.py", line 173, in __call__',
          "    with torch.cuda.graph(cudagraph, pool=self.graph_pool):",
          "RuntimeError: CUDA error: out of memory",
          "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.",
          "For debugging consider passing CUDA_LAUNCH_BLOCKING=1"]
    [e] = observe_lines(tb, current={GMU: 0.9})
    assert (e.event_class, e.line, e.seed_fix) == (GRAPH_OOM, 6, {GMU: 0.85})
    other = ["Traceback (most recent call last):", '  File "/vllm/v1/worker/gpu_model_runner.py", line 1, in execute_model',
             "    out = self.model(x)", "RuntimeError: CUDA error: out of memory"]
    [e2] = observe_lines(other, current={GMU: 0.9})
    assert e2.event_class == TORCH_OOM and e2.variant == "cuda_error"


def test_graph_capture_phase_from_the_info_line_without_frames() -> None:
    lines = ["INFO 10-17 12:00:00 model_runner.py:1000] CUDA graphs can take additional 1~3 GiB memory per GPU. If you are "
             "running out of memory, consider decreasing `gpu_memory_utilization` or enforcing eager mode.",
             "RuntimeError: CUDA error: out of memory"]
    [e] = observe_lines(lines, current={GMU: 0.6, MAX_NUM_SEQS: 8})
    # gmu is at its floor: the next lever is max_num_seqs
    assert (e.event_class, e.seed_fix) == (GRAPH_OOM, {MAX_NUM_SEQS: 6})
    done = ["INFO 10-17 12:00:00 [gpu_model_runner.py:1] Capturing cudagraphs for decoding.",
            "INFO 10-17 12:00:09 [gpu_model_runner.py:2] Graph capturing finished in 9 secs, took 0.43 GiB",
            "RuntimeError: CUDA error: out of memory"]
    assert observe_lines(done)[0].event_class == TORCH_OOM


def test_available_kv_memory_before_a_gives_the_deficit() -> None:
    p = "(EngineCore_DP0 pid=9) "
    lines = [p + "DEBUG 11-23 10:20:36 [gpu_worker.py:263] Memory profiling takes 1.20 seconds",
             p + "DEBUG 11-23 10:20:36 [gpu_worker.py:263] the current vLLM instance can use total_gpu_memory (15.75GiB) x "
                 "gpu_memory_utilization (0.80) = 12.60GiB",
             p + "DEBUG 11-23 10:20:36 [gpu_worker.py:263] model weights take 11.90GiB; non_torch_memory takes 0.15GiB; "
                 "PyTorch activation peak memory takes 1.45GiB; the rest of the memory reserved for KV Cache is -0.90GiB.",
             p + "INFO 11-23 10:20:36 [gpu_worker.py:276] Available KV cache memory: -0.90 GiB",
             p + "ERROR 11-23 10:20:36 [core.py:718] ValueError: " + A_MSG]
    [e] = observe_lines(lines)
    assert e.values == {"gpu_memory_utilization": 0.8, "deficit_gib": 0.9, "total_gib": 15.75,
                        "target_gpu_memory_utilization": 0.8575}
    assert e.seed_fix == {GMU: 0.9} and not e.escalate
    assert [n for n, _ in e.evidence] == [2, 3, 4, 5]


def test_a_at_the_upper_bound_escalates_and_vllm_033_default_is_092() -> None:
    [e] = observe_lines(["(EngineCore_DP0 pid=1) INFO 02-24 20:21:58 [api_server.py:1] vLLM API server version 0.33.0",
                         "ValueError: " + A_MSG])
    assert e.version == "0.33.0" and e.values["gpu_memory_utilization"] == 0.92
    assert e.escalate and e.seed_fix is None
    [e] = observe_lines(["ValueError: " + A_MSG], current={GMU: 0.9})
    assert e.escalate and "already at the bound 0.9" in e.reason


def test_a_deficit_above_the_bound_escalates() -> None:
    lines = ["the current vLLM instance can use total_gpu_memory (12.00GiB) x gpu_memory_utilization (0.70) = 8.40GiB",
             "Available KV cache memory: -3.00 GiB", A_MSG]
    [e] = observe_lines(lines)
    assert e.escalate and e.seed_fix is None and "0.7 + (3 + 0.005)/12 = 0.9504; gpu_memory_utilization would have to rise to 1, above the bound 0.9" in e.reason


def test_gpu_blocks_zero_joins_the_error_that_follows() -> None:
    lines = ["INFO 12-20 20:25:46 gpu_executor.py:83] # GPU blocks: 0, # CPU blocks: 2048",
             "Traceback (most recent call last):",
             '  File "/vllm/worker/worker.py", line 241, in raise_if_cache_size_invalid',
             '    raise ValueError("No available memory for the cache blocks. "',
             "ValueError: " + A_MSG]
    [e] = observe_lines(lines, current={GMU: 0.7})
    assert (e.line, e.variant, e.values["gpu_blocks"]) == (5, "A", 0)
    [alone] = observe_lines(lines[:1], current={GMU: 0.7})
    assert (alone.event_class, alone.variant, alone.line, alone.seed_fix) == (KV_NO_MEMORY, "gpu_blocks_0", 1, {GMU: 0.75})


def test_two_runs_separated_by_a_start_banner_are_two_events() -> None:
    run = ["INFO 04-30 10:20:00 [api_server.py:1043] vLLM API server version 0.8.5", "ValueError: " + A_MSG]
    events = observe_lines(run + run, current={GMU: 0.7})
    assert [e.line for e in events] == [2, 4]
    # the same error twice without a restart in between is one failure
    assert len(observe_lines(run + run[1:], current={GMU: 0.7})) == 1


def test_hard_wrapped_message_is_joined() -> None:
    lines = ["ERROR 04-30 10:20:36 [core.py:396] Free memory on device (9.5/12.0 GiB) on startup is less than desired",
             "GPU memory utilization (0.9, 10.8 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."]
    [e] = observe_lines(lines)
    assert (e.line, e.seed_fix) == (1, {GMU: 0.75})


def test_d_with_tiny_free_memory_escalates() -> None:
    msg = ("Free memory on device (0.84/23.64 GiB) on startup is less than desired GPU memory utilization (0.9, 21.28 GiB). "
           "Decrease GPU memory utilization or reduce GPU memory used by other processes.")
    [e] = observe_lines([msg])
    assert e.escalate and e.seed_fix is None
    assert "below the bound 0.6" in e.reason and "other processes hold about 22.80 GiB" in e.reason


def test_torch_oom_with_another_process_holding_the_gpu_escalates() -> None:
    msg = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.68 GiB "
           "of which 1.00 GiB is free. Process 111 has 4.00 GiB memory in use. Process 222 has 18.00 GiB memory in use.")
    [mine] = observe_lines([f"(VllmWorker rank=0 pid=111) {msg}"], current={GMU: 0.8})
    assert mine.escalate and mine.values["other_processes_gib"] == 18.0 and mine.values["process_gib"] == 4.0
    [unknown] = observe_lines([msg], current={GMU: 0.8})  # no pid: the largest process is taken to be vLLM
    assert not unknown.escalate and unknown.seed_fix == {GMU: 0.75}


def test_torch_oom_at_both_floors_escalates() -> None:
    msg = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.68 GiB "
           "of which 6.25 MiB is free. Including non-PyTorch memory, this process has 23.66 GiB memory in use.")
    [e] = observe_lines([msg], current={GMU: 0.6, MAX_NUM_SEQS: 2})
    assert e.escalate and e.seed_fix is None
    [e] = observe_lines([msg], current={GMU: 0.6})  # max_num_seqs 256 (vLLM default) → the bound 16
    assert e.seed_fix == {MAX_NUM_SEQS: 16}


def test_e_at_two_falls_back_to_gmu_and_escalates_at_both_floors() -> None:
    msg = ("CUDA out of memory occurred when warming up sampler with 2 dummy requests. Please try lowering `max_num_seqs` "
           "or `gpu_memory_utilization` when initializing the engine.")
    assert observe_lines([msg], current={GMU: 0.8})[0].seed_fix == {GMU: 0.75}
    e = observe_lines([msg], current={GMU: 0.6})[0]
    assert e.escalate and e.seed_fix is None


def test_c_with_max_model_len_above_the_bound_escalates_and_gmu_alternative() -> None:
    msg = ("To serve at least one request with the models's max seq len (32768), (0.88 GiB KV cache is needed, which is "
           "larger than the available KV cache memory (0.66 GiB). Based on the available memory, the estimated maximum "
           "model length is 24752. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing "
           "the engine.")
    [e] = observe_lines([msg])
    assert e.escalate and "above the bound 8192" in e.reason
    small = msg.replace("32768", "8192").replace("24752", "6188")
    lines = ["total_gpu_memory (12.00GiB) x gpu_memory_utilization (0.70) = 8.40GiB", small]
    [e] = observe_lines(lines)
    assert e.seed_fix == {MAX_MODEL_LEN: 6144}  # estimate 6188 floored to the 512 grid
    assert e.alternatives == ({GMU: 0.75},)  # 0.7 + 0.22/12 = 0.7183 → ceil 0.75


def test_b_result_below_the_bound_escalates() -> None:
    msg = ("The model's max seq len (4096) is larger than the maximum number of tokens that can be stored in KV cache (800). "
           "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")
    [e] = observe_lines([msg])
    assert e.escalate and "below the bound 1024" in e.reason


# --------------------------------------------------------------------------- negative controls, soft signals

INFO_LINES = [
    "INFO 12-20 20:25:46 gpu_executor.py:83] # GPU blocks: 2048, # CPU blocks: 512",
    "INFO 12-20 20:25:46 gpu_executor.py:84] Maximum concurrency for 4096 tokens per request: 8.00x",
    "(EngineCore_DP0 pid=1) INFO 11-23 10:20:36 [kv_cache_utils.py:1028] GPU KV cache size: 130,720 tokens",
    "(EngineCore_DP0 pid=1) INFO 11-23 10:20:36 [kv_cache_utils.py:1032] Maximum concurrency for 4,096 tokens per request: 31.91x",
    "(EngineCore_DP0 pid=1) INFO 11-23 10:20:36 [gpu_worker.py:276] Available KV cache memory: 3.49 GiB",
    "(EngineCore_DP0 pid=1) INFO 02-24 20:21:58 [kv_cache_planning.py:1] GPU KV cache size: 1,455,040 tokens, Maximum "
    "concurrency for 32,768 tokens per request: 44.40x",
    "INFO 04-30 10:20:36 [gpu_model_runner.py:1] Model loading took 2.8876 GiB and 1.502345 seconds",
    "INFO 04-30 10:20:36 [gpu_model_runner.py:1] Graph capturing finished in 5 secs, took 0.43 GiB",
    "INFO 02-24 20:21:58 [gpu_worker.py:1] CUDA graph memory profiling is enabled (default since v0.21.0). The current "
    "--gpu-memory-utilization=0.9000 is equivalent to --gpu-memory-utilization=0.8800 without CUDA graph memory profiling.",
    "INFO 02-24 20:21:58 [kv_cache_planning.py:1] Auto-fit max_model_len: reduced from 131072 to 65536 to fit in available "
    "KV cache memory (10.0 GiB)",
    "INFO 09-01 10:00:00 [loggers.py:123] Engine 000: Avg prompt throughput: 12.3 tokens/s, Avg generation throughput: 45.6 "
    "tokens/s, Running: 3 reqs, Waiting: 0 reqs, GPU KV cache usage: 12.5%, Prefix cache hit rate: 0.0%",
    "INFO 10-17 12:00:00 model_runner.py:1000] CUDA graphs can take additional 1~3 GiB memory per GPU. If you are running "
    "out of memory, consider decreasing `gpu_memory_utilization` or enforcing eager mode. You can also reduce the "
    "`max_num_seqs` as needed to decrease memory usage.",
]


def test_informational_lines_alone_yield_no_event_but_telemetry() -> None:
    obs = Observer()
    assert obs.feed(INFO_LINES) + obs.finish() == []
    t = obs.telemetry
    assert t["kv_cache_tokens"] == 1455040 and t["max_concurrency"] == 44.4 and t["available_kv_cache_gib"] == 3.49
    assert t["gpu_blocks"] == 2048 and t["model_loading_gib"] == 2.8876 and t["graph_capture_gib"] == 0.43
    assert t["running_reqs"] == 3 and t["kv_cache_usage_percent"] == 12.5 and t["generation_throughput"] == 45.6


F_MSG = ("WARNING {t} scheduler.py:1089] Sequence group {i} is preempted by PreemptionMode.RECOMPUTE mode because there is "
         "not enough KV cache space. This can affect the end-to-end performance. Increase gpu_memory_utilization or "
         "tensor_parallel_size to provide more KV cache memory. total_num_cumulative_preemption={n}")


def test_one_preemption_warning_is_no_event() -> None:
    assert observe_lines([F_MSG.format(t="05-01 10:00:00", i=1, n=1)]) == []


def test_sustained_preemptions_within_the_window_raise_gmu_one_step() -> None:
    lines = [F_MSG.format(t=f"05-01 10:0{k}:00", i=k, n=1 + 50 * k) for k in range(3)]
    [e] = observe_lines(lines, current={GMU: 0.7})
    assert (e.event_class, e.variant, e.line, e.seed_fix) == (PREEMPTION, "F", 3, {GMU: 0.75})
    assert e.values["signals"] == 3 and e.values["window_seconds"] == 120
    [e] = observe_lines(lines, current={GMU: 0.9, MAX_NUM_SEQS: 16})
    assert e.seed_fix == {MAX_NUM_SEQS: 14}


def test_preemptions_spread_beyond_the_window_are_no_event() -> None:
    lines = [F_MSG.format(t=f"05-01 1{k}:00:00", i=k, n=1 + 50 * k) for k in range(3)]  # one per hour
    assert observe_lines(lines) == []
    settings_ = parse_tuning_section({"observer": {"preemption_window_seconds": 7200}})
    assert len(observe_lines(lines, settings=settings_)) == 1


def test_kv_pressure_in_stats_lines_is_a_soft_signal() -> None:
    stat = ("INFO 09-01 10:00:{s:02d} [loggers.py:123] Engine 000: Avg prompt throughput: 1.0 tokens/s, Avg generation "
            "throughput: 9.0 tokens/s, Running: 16 reqs, Waiting: {w} reqs, GPU KV cache usage: {kv}%, Prefix cache hit rate: 0.0%")
    assert observe_lines([stat.format(s=10 * k, w=0, kv="99.0") for k in range(5)]) == []  # full but nobody waits
    [e] = observe_lines([stat.format(s=10 * k, w=4, kv="97.5") for k in range(3)], current={GMU: 0.8})
    assert (e.event_class, e.variant, e.seed_fix) == (PREEMPTION, "stats", {GMU: 0.85})


def test_profiling_error_in_a_traceback_escalates_without_fix() -> None:
    lines = engine_failure("(EngineCore_DP0 pid=3)", [("determine_available_memory", "assert self.init_snapshot.free_memory > free_gpu_memory, (")],
                           "AssertionError: Error in memory profiling. Initial free memory 21.5 GiB, current free memory 22.25 "
                           "GiB. This happens when other processes sharing the same container release GPU memory while vLLM is "
                           "profiling during initialization.")
    [e] = observe_lines(lines)
    assert (e.event_class, e.variant, e.escalate, e.seed_fix) == (PROFILING_ERROR, "G''", True, None)


def test_version_lines() -> None:
    for line, version in [("INFO 04-30 10:20:00 [api_server.py:1043] vLLM API server version 0.8.5", "0.8.5"),
                          ("(EngineCore_DP0 pid=1) INFO 11-23 [core.py:76] Initializing a V1 LLM engine (v0.10.2) with config: x", "0.10.2"),
                          ("INFO 10-17 12:00:00 llm_engine.py:237] Initializing an LLM engine (v0.6.3.post1) with config: x", "0.6.3.post1"),
                          ("INFO 12-20 20:25:46 api_server.py:1] vLLM version 0.4.3", "0.4.3")]:
        [e] = observe_lines([line, "ValueError: " + A_MSG], current={GMU: 0.7})
        assert e.version == version


def test_current_values_precedence() -> None:
    lines = ["(APIServer pid=1) INFO 11-23 10:20:32 [utils.py:328] non-default args: {'model': 'x', 'gpu_memory_utilization': 0.65, "
             "'max_num_seqs': 8}", A_MSG]
    assert observe_lines(lines)[0].seed_fix == {GMU: 0.7}  # from the log's own args
    assert observe_lines(lines, current={"gpu_memory_utilization": 0.75})[0].seed_fix == {GMU: 0.8}  # explicit wins


def test_parse_current() -> None:
    assert parse_current(["vllm.gpu_memory_utilization=0.8", "max-num-seqs=8"]) == {GMU: Decimal("0.8"), MAX_NUM_SEQS: Decimal(8)}
    for bad, why in [("gmu", "expected PARAM=VALUE"), ("foo=1", "unknown parameter 'foo'"), ("gmu=abc", "must be a number"),
                     ("max_num_seqs=2.5", "must be an integer"), ("gmu=-1", "must be a positive number"), ("gmu=nan", "positive")]:
        with pytest.raises(ValueError, match=why):
            parse_current([bad])


# --------------------------------------------------------------------------- hostile input

def test_garbage_binary_and_huge_lines_never_crash(tmp_path: Path) -> None:
    junk = tmp_path / "junk.log"
    junk.write_bytes(os.urandom(200_000) + b"\x00" * 1000 + b"\xff\xfe" * 500)
    assert observe_file(junk) == []
    huge = tmp_path / "huge.log"
    with huge.open("wb") as fh:
        fh.write(b"x" * 5_000_000)  # one 5 MB line without newline
        fh.write(b"\nValueError: " + A_MSG.encode() + b"\n")
        fh.write(("(" * 100_000 + "\n").encode())
        fh.write(b"progress 10%\rprogress 100%\r\n")
    [e] = observe_file(huge, current={GMU: 0.7})
    assert e.line == 2
    assert observe_text("\n".join(["(EngineCore_DP0 pid=1) " * 50 + "x"] * 1000)) == []


def test_unreadable_files_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="log file not found"):
        observe_file(tmp_path / "missing.log")
    with pytest.raises(InputError, match="is a directory"):
        observe_file(tmp_path)


def test_streaming_feed_across_chunks_equals_whole() -> None:
    lines = ["Available KV cache memory: -1.13 GiB", "total_gpu_memory (12.00GiB) x gpu_memory_utilization (0.60) = 7.20GiB",
             'raise ValueError("No available memory for the cache blocks. "', "ValueError: " + A_MSG]
    obs = Observer()
    got = []
    for line in lines:
        got += obs.feed([line])
    got += obs.finish()
    assert [e.to_json() for e in got] == [e.to_json() for e in observe_lines(lines)]
    assert got[0].seed_fix == {GMU: 0.7}


# --------------------------------------------------------------------------- properties of the fixes

@settings(max_examples=200, deadline=None)
@given(total=st.decimals(min_value=Decimal("4"), max_value=Decimal("96"), places=2),
       free_frac=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("0.99"), places=3),
       gmu=st.decimals(min_value=Decimal("0.1"), max_value=Decimal("0.99"), places=2))
def test_d_fix_is_on_grid_in_bounds_and_lowers(total: Decimal, free_frac: Decimal, gmu: Decimal) -> None:
    free = (total * free_frac).quantize(Decimal("0.01"))
    if free >= total * gmu:
        return  # vLLM would not raise D
    msg = (f"Free memory on device ({free}/{total} GiB) on startup is less than desired GPU memory utilization ({gmu}, "
           f"{(total * gmu).quantize(Decimal('0.01'))} GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.")
    [e] = observe_lines([msg])
    if e.seed_fix is None:
        assert e.escalate
        return
    new = Decimal(repr(e.seed_fix[GMU]))
    assert Decimal("0.60") <= new <= Decimal("0.90") and (new - Decimal("0.60")) % Decimal("0.05") == 0
    assert new < gmu and new <= free / total - Decimal("0.02")  # the safe side of the printed numbers


@settings(max_examples=200, deadline=None)
@given(total=st.decimals(min_value=Decimal("8"), max_value=Decimal("80"), places=2),
       deficit=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("8"), places=2),
       gmu=st.sampled_from([Decimal("0.5"), Decimal("0.6"), Decimal("0.65"), Decimal("0.72"), Decimal("0.8"), Decimal("0.85")]))
def test_a_fix_covers_the_deficit(total: Decimal, deficit: Decimal, gmu: Decimal) -> None:
    lines = [f"total_gpu_memory ({total}GiB) x gpu_memory_utilization ({gmu}) = 1.00GiB",
             f"Available KV cache memory: -{deficit} GiB", A_MSG]
    [e] = observe_lines(lines)
    if e.seed_fix is None:
        assert e.escalate and gmu + deficit / total > Decimal("0.85")
        return
    new = Decimal(repr(e.seed_fix[GMU]))
    assert Decimal("0.60") <= new <= Decimal("0.90") and (new - Decimal("0.60")) % Decimal("0.05") == 0
    assert (new - gmu) * total > deficit  # the raise really buys the missing memory
