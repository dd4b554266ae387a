"""Every message variant of VLLM_MESSAGES.md, under every prefix kind of §3, gives the right single event."""

from __future__ import annotations

import json

import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS
from healing.tuning.observer import (
    EVENT_CLASSES,
    KV_MAX_LEN,
    KV_NO_MEMORY,
    KV_ONE_REQUEST,
    PROFILING_ERROR,
    SAMPLER_OOM,
    STARTUP_FREE_MEMORY,
    TORCH_OOM,
    observe_lines,
    strip_prefixes,
)

CURRENT = {GMU: 0.7, MAX_NUM_SEQS: 8, MAX_MODEL_LEN: 4096}
TRY = "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."

# (variant id, exact message, class, escalate, seed_fix, selected values)
MESSAGES = [
    ("A", "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.",
     KV_NO_MEMORY, False, {GMU: 0.75}, {"gpu_memory_utilization": 0.7}),
    ("A'", "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine "
           "(this flag also controls CPU memory reservation on the CPU backend, despite its name). See "
           "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.",
     KV_NO_MEMORY, False, {GMU: 0.75}, {}),
    ("B", "The model's max seq len (4096) is larger than the maximum number of tokens that can be stored in KV cache (3000). "
          + TRY, KV_MAX_LEN, False, {MAX_MODEL_LEN: 2560}, {"max_model_len": 4096, "kv_cache_tokens": 3000}),
    ("C", "To serve at least one request with the models's max seq len (8192), (1.00 GiB KV cache is needed, which is larger "
          "than the available KV cache memory (0.60 GiB).  " + TRY,
     KV_ONE_REQUEST, False, {MAX_MODEL_LEN: 4608}, {"max_model_len": 8192, "needed_gib": 1.0, "available_gib": 0.6,
                                                    "computed_max_model_len": 4915}),
    ("C", "To serve at least one request with the models's max seq len (8192), (1.00 GiB KV cache is needed, which is larger "
          "than the available KV cache memory (0.60 GiB). Based on the available memory,  " + TRY,
     KV_ONE_REQUEST, False, {MAX_MODEL_LEN: 4608}, {"computed_max_model_len": 4915}),
    ("C", "To serve at least one request with the models's max seq len (8192), (1.00 GiB KV cache is needed, which is larger "
          "than the available KV cache memory (0.60 GiB). " + TRY,
     KV_ONE_REQUEST, False, {MAX_MODEL_LEN: 4608}, {"computed_max_model_len": 4915}),
    ("C'", "To serve at least one request with the models's max seq len (8192), (1.00 GiB KV cache is needed, which is larger "
           "than the available KV cache memory (0.60 GiB). Based on the available memory, the estimated maximum model length "
           "is 5100. " + TRY,
     KV_ONE_REQUEST, False, {MAX_MODEL_LEN: 4608}, {"estimated_max_model_len": 5100}),
    ("C''", "To serve at least one request with the model's max seq len (8192), (1.0 GiB KV cache is needed, which is larger "
            "than the available KV cache memory (0.6 GiB). Based on the available memory, the estimated maximum model length "
            "is 4912. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing "
            "`max_model_len` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ "
            "for more details.",
     KV_ONE_REQUEST, False, {MAX_MODEL_LEN: 4608}, {"estimated_max_model_len": 4912, "needed_gib": 1.0}),
    ("D", "Free memory on device (9.5/12.0 GiB) on startup is less than desired GPU memory utilization (0.9, 10.8 GiB). "
          "Decrease GPU memory utilization or reduce GPU memory used by other processes.",
     STARTUP_FREE_MEMORY, False, {GMU: 0.75}, {"free_gib": 9.5, "total_gib": 12.0, "gpu_memory_utilization": 0.9,
                                               "requested_gib": 10.8, "target_gpu_memory_utilization": 0.7717}),
    ("D'", "Free memory on device cuda:1 (9.5/12.0 GiB) on startup is less than desired GPU memory utilization (0.9, 10.8 GiB). "
           "Decrease GPU memory utilization or reduce GPU memory used by other processes.",
     STARTUP_FREE_MEMORY, False, {GMU: 0.75}, {"free_gib": 9.5}),
    ("D''", "Free memory on device xpu:0 (9.5/12.0 GiB) on startup is less than the engine's budget after excluding external "
            "process's weights (0.9, 10.8 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
     STARTUP_FREE_MEMORY, False, {GMU: 0.75}, {"requested_gib": 10.8}),
    ("E", "CUDA out of memory occurred when warming up sampler with 8 dummy requests. Please try lowering `max_num_seqs` or "
          "`gpu_memory_utilization` when initializing the engine.",
     SAMPLER_OOM, False, {MAX_NUM_SEQS: 4}, {"num_dummy_requests": 8}),
    ("E-pooler", "CUDA out of memory occurred when warming up pooler with 16 dummy requests. Please try lowering `max_num_seqs` "
                 "or `gpu_memory_utilization` when initializing the engine.",
     SAMPLER_OOM, False, {MAX_NUM_SEQS: 8}, {"num_dummy_requests": 16}),
    ("G", "Error in memory profiling. This happens when the GPU memory was not properly cleaned up before initializing the vLLM "
          "instance.", PROFILING_ERROR, True, None, {}),
    ("G'", "Error in memory profiling. Initial free memory 23622320128, current free memory 24696061952. This happens when the "
           "GPU memory was not properly cleaned up before initializing the vLLM instance.",
     PROFILING_ERROR, True, None, {"initial_free_gib": 22.0, "current_free_gib": 23.0}),
    ("G''", "Error in memory profiling. Initial free memory 21.5 GiB, current free memory 22.25 GiB. This happens when other "
            "processes sharing the same container release GPU memory while vLLM is profiling during initialization. To fix "
            "this, ensure consistent GPU memory allocation or isolate vLLM in its own container.",
     PROFILING_ERROR, True, None, {"initial_free_gib": 21.5, "current_free_gib": 22.25}),
    ("I", "GPU memory utilization must be less than 1.0. Got 1.5.", STARTUP_FREE_MEMORY, False, {GMU: 0.9},
     {"gpu_memory_utilization": 1.5}),
    ("J", "User-specified max_model_len (6000) is greater than the derived max_model_len (max_position_embeddings=4096 or "
          "model_max_length=None in model's config.json). This may lead to incorrect model outputs or CUDA errors.",
     KV_MAX_LEN, False, {MAX_MODEL_LEN: 4096}, {"max_model_len": 6000, "derived_max_model_len": 4096}),
    ("torch", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.68 GiB "
              "of which 6.25 MiB is free. Including non-PyTorch memory, this process has 23.66 GiB memory in use. Of the "
              "allocated memory 22.90 GiB is allocated by PyTorch, and 212.76 MiB is reserved by PyTorch but unallocated.",
     TORCH_OOM, False, {GMU: 0.65}, {"tried_gib": 0.01953125, "total_gib": 23.68, "free_gib": 0.006103515625,
                                     "process_gib": 23.66}),
    ("torch", "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacty of 14.75 "
              "GiB of which 1.06 GiB is free. Process 12345 has 13.68 GiB memory in use. Of the allocated memory 13.2 GiB is "
              "allocated by PyTorch, and 300.00 MiB is reserved by PyTorch but unallocated.",
     TORCH_OOM, False, {GMU: 0.65}, {"tried_gib": 2.0, "total_gib": 14.75, "free_gib": 1.06, "process_gib": 13.68}),
    ("torch", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1024.00 KiB. GPU 1 has a total capacity of 79.15 "
              "GiB of which 512.00 KiB is free. Including non-PyTorch memory, this process has 79.10 GiB memory in use. Of the "
              "allocated memory 75.00 GiB is allocated by PyTorch, with 1.20 GiB allocated in private pools (e.g., CUDA Graphs).",
     TORCH_OOM, False, {GMU: 0.65}, {"tried_gib": 0.0009765625, "free_gib": 0.00048828125, "gpu": 1}),
    ("torch", "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; 14.56 GiB "
              "already allocated; 3.06 MiB free; 14.67 GiB reserved in total by PyTorch)",
     TORCH_OOM, False, {GMU: 0.65}, {"total_gib": 15.78, "free_gib": 0.0029882812500}),
    ("cuda_error", "RuntimeError: CUDA error: out of memory", TORCH_OOM, False, {GMU: 0.65}, {}),
]

PREFIXES = {
    "none": "",
    "0.4.3": "ERROR 12-20 20:25:46 worker.py:241] ",
    "0.8.5": "ERROR 04-30 10:20:36 [core.py:396] ",
    "0.10.2": "(EngineCore_DP0 pid=17374) ERROR 11-23 10:20:36 [v1/engine/core.py:842] ",
    "0.33.0": "(EngineCore_DP0 pid=17374) ERROR 02-24 20:21:58 [core.py:1085] ",
    "VllmWorkerProcess": "(VllmWorkerProcess pid=90) ERROR 10-10 10:10:10 multiproc_worker_utils.py:120] ",
    "VllmWorker rank": "(VllmWorker rank=1 pid=4242) ERROR 06-01 11:11:11 [multiproc_executor.py:546] ",
    "Worker": "(Worker pid=77) ",
    "EngineCore_0": "(EngineCore_0 pid=12) ",
    "APIServer": "(APIServer pid=1) ",
    "RayWorkerWrapper": "(RayWorkerWrapper pid=1234, ip=10.0.0.2) ERROR 06-01 11:11:11 [worker_base.py:620] ",
    "LLMRayActor": "(LLMRayActor pid=99) ",
    "rank": "[rank0]: ",
    "docker": "vllm-1  | ",
    "docker+0.10.2": "vllm-1  | (EngineCore_DP0 pid=7) ERROR 11-23 10:20:36 [core.py:718] ",
    "ci timestamp": "[2026-02-24T20:21:58Z] ",
    "iso ns": "2024-06-28T06:11:52.685300953Z ",
    "combo": "2024-06-28T06:11:52.685300953Z vllm-1  | (VllmWorker rank=0 pid=5) [rank0]: ERROR 06-28 06:11:52 [gpu_worker.py:1] ",
    "ansi": "\x1b[32mvllm-1  |\x1b[0m \x1b[1;31mERROR\x1b[0m 04-30 10:20:36 [core.py:396] ",
}


@pytest.mark.parametrize("prefix", list(PREFIXES.values()), ids=list(PREFIXES))
@pytest.mark.parametrize("variant, message, cls, escalate, fix, values", MESSAGES,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MESSAGES)])
def test_message_variant_with_prefix(prefix: str, variant: str, message: str, cls: str, escalate: bool,
                                     fix: dict | None, values: dict) -> None:
    lines = ["INFO 01-01 00:00:00 [x.py:1] unrelated line", prefix + message]
    events = observe_lines(lines, current=CURRENT)
    assert len(events) == 1, [e.to_json() for e in events]
    e = events[0]
    assert e.event_class == cls and e.event_class in EVENT_CLASSES
    assert e.variant == variant
    assert e.line == 2
    assert e.escalate is escalate
    assert e.seed_fix == fix
    for key, value in values.items():
        assert e.values[key] == pytest.approx(value, abs=1e-12), key
    assert e.subsystem == "vllm"
    assert e.reason and "\n" not in e.reason


def test_strip_prefixes_reports_pid_and_timestamp() -> None:
    text, ts, pid, had = strip_prefixes("vllm-1  | (RayWorkerWrapper pid=1234, ip=10.0.0.2) [rank1]: hello world")
    assert (text, ts, pid, had) == ("hello world", None, 1234, True)
    text, ts, pid, had = strip_prefixes("INFO 12-20 20:25:46 worker.py:241]   File \"x.py\", line 1, in f")
    assert text == '  File "x.py", line 1, in f' and ts is not None and pid is None
    assert strip_prefixes("plain message") == ("plain message", None, None, False)
    # the seconds between two vLLM stamps are exact (the year is unknown but irrelevant)
    a = strip_prefixes("WARNING 05-01 10:00:00 [scheduler.py:1] x")[1]
    b = strip_prefixes("WARNING 05-01 10:04:30 [scheduler.py:1] x")[1]
    assert a is not None and b is not None and b - a == 270


def test_seed_fix_json_is_decimal_clean() -> None:
    msg = ("Free memory on device (10.0/12.0 GiB) on startup is less than desired GPU memory utilization (0.9, 10.8 GiB). "
           "Decrease GPU memory utilization or reduce GPU memory used by other processes.")
    [e] = observe_lines([msg])
    assert e.seed_fix == {"vllm.gpu_memory_utilization": 0.8}
    assert json.dumps(e.to_json()["seed_fix"]) == '{"vllm.gpu_memory_utilization": 0.8}'
    assert e.values["target_gpu_memory_utilization"] == 0.8133
    assert e.reason == ("only 10 of 12 GiB are free at startup but gpu_memory_utilization 0.9 asks for 10.8 GiB; free/total − "
                        "margin = 0.8333 − 0.02 = 0.8133; lower gpu_memory_utilization to 0.8 (floored to the 0.05 grid)")
    doc = e.to_json()
    assert set(doc) >= {"class", "line", "values", "escalate", "reason", "seed_fix", "version", "subsystem"}
    assert doc["class"] == "startup_free_memory_below_request" and doc["line"] == 1
