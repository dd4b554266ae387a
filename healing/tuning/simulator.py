"""A vLLM server simulator with modelled GPU memory, for demos, canary tests and the Observer's tests.

It takes ``vllm serve``'s flags as vLLM 0.33 parses them (healing/tuning/simargs.py), prints the log lines of
vLLM 0.33.0 — or of 0.20.0 / 0.10.2 with ``--log-format`` — and fails with vLLM's exact message, traceback and
a non-zero exit under the same conditions vLLM would, computed from a GPU profile (per tensor-parallel rank):

* gpu_memory_utilization outside 0 < x ≤ 1 (0.10: x < 1) → pydantic's / vLLM's bounds error (I)
* max_model_len above the model's limit (J); max_num_batched_tokens below max_model_len without chunked
  prefill, or below max_num_seqs (batched_len, batched_seqs)
* weights held by another process ≥ the budget (external, 0.33) or free memory below the engine's budget (D'')
* free memory (total − other processes) < gmu × total → "Free memory on device …" (D); the weights do not fit
  in what is free → "Failed to load model - not enough GPU memory" (weights, 0.20+)
* KV budget (gmu × total − weights − non-torch − activation peak − CUDA graph estimate from 0.20) ≤ 0 →
  "No available memory …" (A); one max_model_len request does not fit → "To serve at least one request …" (C');
  ``--max-model-len auto`` with no room for one token → "Cannot auto-fit max_model_len …" (auto_fit)
* other processes release memory while vLLM profiles → "Error in memory profiling …" (profiling)
* ``--kv-cache-memory-bytes`` larger than the card, or other processes that grew after the free-memory check
  → torch's CUDA OOM when the KV cache is allocated (kv_alloc)
* CUDA graphs outside the budget (0.10, or ``--kv-cache-memory-bytes``) do not fit → "CUDA error: out of memory"
* a hybrid (Mamba) model with fewer KV blocks than max_num_seqs → "max_num_seqs (N) exceeds available Mamba
  cache blocks (M) …" (mamba, 0.20+)
* max_num_seqs × sampler bytes > headroom → "CUDA out of memory occurred when warming up sampler" (E)

When healthy it serves vLLM's OpenAI endpoints and ``/metrics`` (healing/tuning/sim_server.py). The memory
profiling breakdown is printed as vLLM does with ``VLLM_LOGGING_LEVEL=DEBUG`` in the 0.10 format, so the
Observer can read the card's size from it. docs/simulator.md lists the flags, profiles and printed lines.

Run it as ``python -m healing.tuning.simulator [flags]`` or ``selfheal simulate vllm [flags]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn, TextIO

from healing.tuning.simargs import EXPLICIT, add_arguments, config_file_argv, normalize_argv

VERSIONS = {"0.10": "0.10.2", "0.20": "0.20.0", "0.33": "0.33.0"}
VERSION = VERSIONS["0.10"]  # the 0.10 format's version (kept for importers)
GIB = 1024**3
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
VLLM_PATH = "/usr/local/lib/python3.12/dist-packages/vllm"


@dataclass(frozen=True)
class GpuProfile:
    """The modelled GPU and model. Sizes in GiB (Decimal), per-token/per-seq sizes in bytes (whole model;
    tensor parallelism divides weights and KV bytes per token among the ranks)."""

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
    # 0.33: weights held by another process (a weight-sharing loader); they count against the budget
    external_weights_gib: Decimal = Decimal("0")
    # a hybrid model: Mamba layers keep one state per sequence in a KV block (block_size is then the
    # attention block that matches the Mamba state's page, as vLLM aligns them)
    hybrid: bool = False
    # other processes' memory changes while vLLM starts (after its free-memory check): negative releases it
    # (vLLM's profiling assertion), positive takes it (the KV cache allocation then runs out, 0.20+)
    other_processes_change_gib: Decimal = Decimal("0")


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
    # A hybrid (attention + Mamba) model of ~70 GiB in bf16 on an 80 GB H100: vLLM's default max_num_seqs
    # there is 1024 but at gmu 0.92 the KV cache holds 558 blocks of 1056 tokens (one Mamba state each).
    "hybrid": GpuProfile(
        name="hybrid", gpu_name="NVIDIA H100 80GB HBM3", total_gib=Decimal("79.19"), other_processes_gib=Decimal("0.50"),
        weights_gib=Decimal("66.50"), non_torch_gib=Decimal("0.60"), activation_peak_gib=Decimal("2.40"),
        kv_bytes_per_token=4608, graph_capture_gib=Decimal("0.70"), sampler_bytes_per_seq=1 << 20,
        model_max_len=262144, block_size=1056, hybrid=True),
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
    known = {f.name for f in fields(GpuProfile)}
    changes: dict[str, Any] = {"name": path.stem}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"--profile: unknown key {key!r} in {spec}")
        current = getattr(base, key)
        try:
            if isinstance(current, Decimal):
                changes[key] = Decimal(str(value))
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError
                changes[key] = value
            elif isinstance(current, str):
                changes[key] = str(value)
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
    """vLLM's engine flags. ``None`` means vLLM's default, resolved by ``plan_memory`` for the log format:
    gpu_memory_utilization 0.92 from 0.20 (0.9 before), max_num_seqs 256 (1024 on cards ≥ 70 GiB),
    max_num_batched_tokens 2048 (8192 on cards ≥ 70 GiB), max_model_len the model's; -1 auto-fits it."""

    gpu_memory_utilization: Decimal | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    enforce_eager: bool = False
    max_num_batched_tokens: int | None = None
    kv_cache_memory_bytes: int | None = None
    tensor_parallel_size: int = 1
    enable_chunked_prefill: bool | None = None
    log_format: str = "0.33"


@dataclass(frozen=True)
class MemoryPlan:
    """What vLLM would compute at startup (per rank); ``failure`` is None when the server comes up."""

    failure: str | None  # "I", "J", "batched_len", "batched_seqs", "external", "D''", "D", "weights", "profiling",
    #                      "A", "C'", "auto_fit", "kv_alloc", "graph", "mamba", "E" or None
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
    gpu_memory_utilization: Decimal = Decimal("0.9")
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    chunked_prefill: bool = True
    log_format: str = "0.10"
    tensor_parallel_size: int = 1
    weights_bytes: int = 0  # per rank, held by this process
    external_bytes: int = 0
    bytes_per_block: int = 0
    block_size: int = 16
    graph_in_budget: bool = False  # 0.20+: the CUDA graph estimate is subtracted from the KV budget
    kv_from_flag: bool = False  # --kv-cache-memory-bytes: no profiling
    auto_fit: str | None = None  # "full" / "reduced" when --max-model-len auto
    model_max_len: int = 32768
    sampler_free_bytes: int = 0  # what PyTorch reports free when the sampler warm-up fails
    free_at_kv_bytes: int = 0  # free memory when the KV cache is allocated (other processes may have grown)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def version(self) -> str:
        return VERSIONS[self.log_format]


def _bytes(gib: Decimal) -> int:
    return int((gib * GIB).to_integral_value(rounding=ROUND_FLOOR))


def _r2(nbytes: float) -> float:
    """vLLM's ``round(b / GiB_bytes, 2)`` (prints 12.0, 6.07 …): ``format_gib``."""
    return round(nbytes / GIB, 2)


def default_gmu(log_format: str) -> Decimal:
    """vLLM's default gpu_memory_utilization: 0.92 from 0.20 (config/cache.py), 0.9 before."""
    return Decimal("0.9") if log_format == "0.10" else Decimal("0.92")


def batch_defaults(profile: GpuProfile, log_format: str = "0.33") -> tuple[int, int]:
    """vLLM's API-server defaults (EngineArgs.get_batch_defaults): (max_num_seqs, max_num_batched_tokens);
    the tier for cards of 160 GiB and more exists from 0.33."""
    total = profile.total_gib
    if total >= 160 and log_format == "0.33":
        return 1024, 16384
    if total >= 70 and "a100" not in profile.gpu_name.lower():
        return 1024, 8192
    return 256, 2048


def plan_memory(profile: GpuProfile, config: SimConfig) -> MemoryPlan:
    """Pure: the startup arithmetic of vLLM's V1 engine (0.10.2, 0.20.0 or 0.33.0) on the modelled GPU."""
    fmt = config.log_format
    modern = fmt != "0.10"
    gmu = config.gpu_memory_utilization if config.gpu_memory_utilization is not None else default_gmu(fmt)
    seqs_default, mbt_default = batch_defaults(profile, fmt)
    seqs = config.max_num_seqs if config.max_num_seqs is not None else seqs_default
    chunked = config.enable_chunked_prefill if config.enable_chunked_prefill is not None else True
    tp = max(1, config.tensor_parallel_size)
    total = _bytes(profile.total_gib)
    external = _bytes(profile.external_weights_gib) if fmt == "0.33" else 0
    free = total - _bytes(profile.other_processes_gib) - external
    if fmt == "0.10":
        requested = int((Decimal(total) * gmu).to_integral_value(rounding=ROUND_FLOOR))
    else:  # math.ceil(total_memory * gpu_memory_utilization) (v1/worker/utils.py request_memory)
        requested = int((Decimal(total) * gmu).to_integral_value(rounding=ROUND_CEILING))
    auto = config.max_model_len == -1
    mml = profile.model_max_len if config.max_model_len in (None, -1) else config.max_model_len
    if config.max_num_batched_tokens is not None:
        mbt = config.max_num_batched_tokens
    else:
        mbt = mbt_default if chunked else max(mml, mbt_default)
    weights = _bytes(profile.weights_gib / tp) if not external else 0
    kv_per_token = math.ceil(profile.kv_bytes_per_token / tp)
    activation = _bytes(profile.activation_peak_gib)
    non_kv = weights + _bytes(profile.non_torch_gib) + activation
    graph = 0 if config.enforce_eager else _bytes(profile.graph_capture_gib)
    kv_flag = config.kv_cache_memory_bytes is not None and config.kv_cache_memory_bytes > 0 and modern
    graph_in_budget = modern and not kv_flag
    budget = requested - external if external else requested
    if kv_flag:
        kv_avail = int(config.kv_cache_memory_bytes or 0)
    else:
        kv_avail = budget - non_kv - (graph if graph_in_budget else 0)
    per_block = kv_per_token * profile.block_size
    check = kv_avail - per_block if fmt == "0.33" else kv_avail  # 0.33 keeps the null block out of planning
    fit_blocks = max(check, 0) // per_block
    fit_len = fit_blocks * profile.block_size
    auto_fit = None
    if auto and modern and not (requested - external <= 0 and external):
        if 0 < fit_len < mml:
            mml, auto_fit = fit_len, "reduced"
        elif fit_len >= mml:
            auto_fit = "full"
    if not modern and config.max_num_batched_tokens is None and not chunked:
        mbt = max(mml, mbt_default)
    blocks = max(kv_avail, 0) // per_block
    needed = math.ceil(mml / profile.block_size) * per_block
    if fmt == "0.10":
        estimate = blocks * profile.block_size if kv_avail > 0 else 0
        kv_tokens = blocks * profile.block_size
        concurrency = kv_tokens / mml if mml else 0.0
    else:
        estimate = min(fit_len, mml) if check > 0 else 0
        concurrency = blocks / math.ceil(mml / profile.block_size) if mml else 0.0
        kv_tokens = int(concurrency * mml)
    sampler = seqs * profile.sampler_bytes_per_seq
    change = _bytes(profile.other_processes_change_gib) if profile.other_processes_change_gib >= 0 else \
        -_bytes(-profile.other_processes_change_gib)
    if fmt == "0.10":
        headroom = free - requested - graph + activation
    else:  # after the KV cache and the graphs are allocated; the profiling activations are freed
        used = weights + _bytes(profile.non_torch_gib) + blocks * per_block + graph
        headroom = free - used
    base = dict(total_bytes=total, free_bytes=free, requested_bytes=requested, kv_available_bytes=kv_avail,
                num_gpu_blocks=blocks, kv_tokens=kv_tokens, max_model_len=mml, needed_bytes=needed,
                estimated_max_len=estimate, graph_bytes=graph, sampler_bytes=sampler, headroom_bytes=headroom,
                max_concurrency=concurrency, gpu_memory_utilization=gmu, max_num_seqs=seqs,
                max_num_batched_tokens=mbt, chunked_prefill=chunked, log_format=fmt, tensor_parallel_size=tp,
                weights_bytes=weights, external_bytes=external, bytes_per_block=per_block,
                block_size=profile.block_size, graph_in_budget=graph_in_budget, kv_from_flag=kv_flag,
                auto_fit=auto_fit, model_max_len=profile.model_max_len, sampler_free_bytes=max(headroom, 0),
                free_at_kv_bytes=free - max(change, 0))

    def fail(kind: str, message: str) -> MemoryPlan:
        return MemoryPlan(failure=kind, message=message, **base)  # type: ignore[arg-type]

    g = _flag_float(gmu)
    if fmt == "0.10" and not 0 < gmu < 1:
        return fail("I", f"GPU memory utilization must be less than 1.0. Got {g}.")
    if modern and not 0 < gmu <= 1:
        kind = "less_than_equal" if gmu > 1 else "greater_than"
        text = "less than or equal to 1" if gmu > 1 else "greater than 0"
        return fail("I", f"1 validation error for CacheConfig\ngpu_memory_utilization\n  Input should be {text} "
                         f"[type={kind}, input_value={g}, input_type=float]\n"
                         f"    For further information visit https://errors.pydantic.dev/2.12/v/{kind}")
    if mml > profile.model_max_len:
        msg = (f"User-specified max_model_len ({mml}) is greater than the derived max_model_len "
               f"(max_position_embeddings={profile.model_max_len} or model_max_length=None in model's config.json).")
        if fmt == "0.10":
            return fail("J", f"{msg} To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. "
                             f"VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution.")
        return fail("J", f"{msg} To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. "
                         f"VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution. If the model uses relative "
                         f"position encoding (RoPE), positions exceeding derived_max_model_len lead to nan. If the model "
                         f"uses absolute position encoding, positions exceeding derived_max_model_len will cause a CUDA "
                         f"array out-of-bounds error.")
    if mbt < mml and not chunked:
        return fail("batched_len", f"max_num_batched_tokens ({mbt}) is smaller than max_model_len ({mml}). This "
                                   f"effectively limits the maximum sequence length to max_num_batched_tokens and makes "
                                   f"vLLM reject longer sequences. Please increase max_num_batched_tokens or decrease "
                                   f"max_model_len.")
    if mbt < seqs:
        return fail("batched_seqs", f"max_num_batched_tokens ({mbt}) must be greater than or equal to max_num_seqs ({seqs}).")
    if external:
        if budget <= 0:
            return fail("external", f"Externally held weights on device cuda:0 ({_r2(external)}/{_r2(total)} GiB) exceed "
                                    f"the desired GPU memory utilization ({g}, {_r2(requested)} GiB). Increase GPU memory "
                                    f"utilization or reduce GPU memory used by other processes.")
        if free < budget:
            return fail("D''", f"Free memory on device cuda:0 ({_r2(free)}/{_r2(total)} GiB) on startup is less than the "
                               f"engine's budget after excluding external process's weights ({g}, {_r2(budget)} GiB). "
                               f"Decrease GPU memory utilization or reduce GPU memory used by other processes.")
    elif free < requested:
        device = "" if fmt == "0.10" else " cuda:0"
        return fail("D", f"Free memory on device{device} ({_r2(free)}/{_r2(total)} GiB) on startup is less than desired GPU "
                         f"memory utilization ({g}, {_r2(requested)} GiB). Decrease GPU memory utilization "
                         f"or reduce GPU memory used by other processes.")
    if modern and weights + _bytes(profile.non_torch_gib) > free:
        return fail("weights", "Failed to load model - not enough GPU memory. Try lowering --gpu-memory-utilization to "
                               "free memory for weights, increasing --tensor-parallel-size, or using --quantization. See "
                               "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more tips.")
    consumed = weights + _bytes(profile.non_torch_gib)
    released = -change if change < 0 else 0
    if not kv_flag and ((released > consumed) if modern else (change < 0 and released >= consumed)):
        after = free - consumed + released
        shown = (lambda b: str(_r2(b))) if modern else (lambda b: repr(b / GIB))
        return fail("profiling", f"Error in memory profiling. Initial free memory {shown(free)} GiB, current free "
                                 f"memory {shown(after)} GiB. This happens when other processes sharing the same "
                                 f"container release GPU memory while vLLM is profiling during initialization. To fix "
                                 f"this, ensure consistent GPU memory allocation or isolate vLLM in its own container.")
    if auto and modern and fit_len <= 0:  # 0.20+: auto-fit runs before the capacity check
        return fail("auto_fit", "Cannot auto-fit max_model_len: not enough GPU memory available to serve even a single "
                                "token. Try increasing `gpu_memory_utilization`.")
    if check <= 0:
        return fail("A", _no_memory_message(fmt))
    if needed > check:
        return fail("C'", _one_request_message(fmt, mml, needed, check, estimate))
    if profile.hybrid and modern and not config.enforce_eager and seqs > blocks:
        return fail("mamba", f"max_num_seqs ({seqs}) exceeds available Mamba cache blocks ({blocks}). Each decode "
                             f"sequence requires one Mamba cache block, so CUDA graph capture cannot proceed. Please "
                             f"lower max_num_seqs to at most {blocks} or increase gpu_memory_utilization.")
    resident = weights + _bytes(profile.non_torch_gib) + kv_avail  # after the KV cache is allocated
    if (kv_flag or (modern and change > 0)) and resident > free - max(change, 0):
        return fail("kv_alloc", "CUDA out of memory")
    if not graph_in_budget and graph > free - max(requested, resident + (0 if kv_flag else activation)):
        return fail("graph", "CUDA error: out of memory")
    if sampler > headroom:
        return fail("E", f"CUDA out of memory occurred when warming up sampler with {seqs} dummy "
                         f"requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` when initializing "
                         f"the engine.")
    return MemoryPlan(failure=None, message=None, **base)  # type: ignore[arg-type]


def _no_memory_message(fmt: str) -> str:
    head = "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine"
    see = " See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    if fmt == "0.10":
        return head + "."
    if fmt == "0.20":
        return head + "." + see
    return head + " (this flag also controls CPU memory reservation on the CPU backend, despite its name)." + see


def _one_request_message(fmt: str, mml: int, needed: int, available: int, estimate: int) -> str:
    if fmt == "0.10":
        est = f" Based on the available memory, the estimated maximum model length is {estimate}." if estimate > 0 else ""
        return (f"To serve at least one request with the models's max seq len ({mml}), ({needed / GIB:.2f} GiB KV cache "
                f"is needed, which is larger than the available KV cache memory ({available / GIB:.2f} GiB).{est} Try "
                f"increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")
    est = f"Based on the available memory, the estimated maximum model length is {estimate}. " if estimate > 0 else ""
    whose, knob = ("models's", "`gpu_memory_utilization`") if fmt == "0.20" else (
        "model's", "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend)")
    return (f"To serve at least one request with the {whose} max seq len ({mml}), ({_r2(needed)} GiB KV cache is "
            f"needed, which is larger than the available KV cache memory ({_r2(available)} GiB). {est}Try increasing "
            f"{knob} or decreasing `max_model_len` when initializing the engine. See "
            f"https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.")


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


def torch_oom(tried: int, total: int, free: int, in_use: int) -> str:
    """PyTorch's CUDA caching allocator's OOM text."""
    return (f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {_torch_size(tried)}. GPU 0 has a total "
            f"capacity of {_torch_size(total)} of which {_torch_size(max(free, 0))} is free. Including non-PyTorch "
            f"memory, this process has {_torch_size(in_use)} memory in use. Of the allocated memory "
            f"{_torch_size(in_use)} is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated.")


# --------------------------------------------------------------------------- log output

class VllmLog:
    """Writes vLLM's lines: ``(Proc pid=N) LEVEL MM-DD HH:MM:SS [file:line] message``.

    Formats 0.10 and 0.20 prefix raw writes (tracebacks, uvicorn lines) too, as their stdout/stderr decoration
    does; 0.33 prefixes only logging records. 0.20 and 0.33 continue a multi-line record with ``\\r\\n`` +
    prefix (vLLM's NewLineFormatter); the 0.10 format keeps the simulator's original ``\\n``.
    """

    def __init__(self, out: TextIO, err: TextIO, pid: int, log_format: str = "0.10") -> None:
        self.out, self.err, self.pid, self.format = out, err, pid, log_format
        self._lock = threading.Lock()

    def log(self, proc: str, level: str, where: str, message: str) -> None:
        stamp = datetime.now().strftime("%m-%d %H:%M:%S")
        head = f"({proc} pid={self.pid}) {level} {stamp} [{where.rsplit('/', 1)[-1]}] "
        with self._lock:
            if self.format != "0.10":  # NewLineFormatter; 0.20's stream decoration prefixes after the \r\n too
                self.out.write(head + message.replace("\n", "\r\n" + head) + "\n")
            else:
                for piece in message.split("\n"):  # the formatter repeats the prefix on every line
                    self.out.write(head + piece + "\n")
            self.out.flush()

    def raw(self, proc: str, text: str, stream: TextIO | None = None) -> None:
        target = stream or self.err
        prefix = "" if self.format == "0.33" else f"({proc} pid={self.pid}) "
        with self._lock:
            for piece in text.split("\n"):
                target.write(f"{prefix}{piece}\n")
            target.flush()


Frame = tuple[str, int, str, str]


def _traceback(frames: list[Frame], exc_line: str) -> str:
    lines = ["Traceback (most recent call last):"]
    for file, no, func, code in frames:
        lines.append(f'  File "{VLLM_PATH}/{file}", line {no}, in {func}')
        lines.append(f"    {code}")
    lines.append(exc_line)
    return "\n".join(lines)


_ENGINE_FRAMES = [
    ("v1/engine/core.py", 709, "run_engine_core", "engine_core = EngineCoreProc(*args, **kwargs)"),
    ("v1/engine/core.py", 505, "__init__", "super().__init__(vllm_config, executor_class, log_stats,"),
]
_FAILURE_FRAMES: dict[str, list[Frame]] = {
    "D": [("v1/engine/core.py", 80, "__init__", "self.model_executor = executor_class(vllm_config)"),
          ("v1/worker/gpu_worker.py", 183, "init_device", "raise ValueError(")],
    "profiling": [("v1/engine/core.py", 91, "__init__", "self._initialize_kv_caches(vllm_config)"),
                  ("v1/engine/core.py", 160, "_initialize_kv_caches", "self.model_executor.determine_available_memory())"),
                  ("v1/worker/gpu_worker.py", 271, "determine_available_memory",
                   "assert self.init_snapshot.free_memory > free_gpu_memory, (")],
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

# vLLM 0.33.0's call chain (line numbers of its source); 0.20 prints the same shape
_FRAMES_033: dict[str, list[Frame]] = {
    "start": [("v1/engine/core.py", 1555, "run_engine_core", "engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)"),
              ("v1/engine/core.py", 1195, "__init__", "super().__init__(")],
    "init_device": [("v1/engine/core.py", 150, "__init__", "self.model_executor = executor_class(vllm_config)"),
                    ("v1/executor/abstract.py", 109, "__init__", "self._init_executor()"),
                    ("v1/executor/uniproc_executor.py", 69, "_init_executor", "self.driver_worker.init_device()"),
                    ("v1/worker/worker_base.py", 326, "init_device", "self.worker.init_device()  # type: ignore"),
                    ("v1/worker/gpu_worker.py", 542, "init_device", "self.requested_memory = request_memory("),
                    ("v1/worker/utils.py", 0, "request_memory", "raise ValueError(")],
    "load": [("v1/engine/core.py", 150, "__init__", "self.model_executor = executor_class(vllm_config)"),
             ("v1/executor/abstract.py", 109, "__init__", "self._init_executor()"),
             ("v1/executor/uniproc_executor.py", 74, "_init_executor", "self.driver_worker.load_model()"),
             ("v1/worker/gpu_worker.py", 601, "load_model", "self.model_runner.load_model(load_dummy_weights=load_dummy_weights)"),
             ("v1/worker/gpu_model_runner.py", 5087, "load_model", "raise e"),
             ("v1/worker/gpu_model_runner.py", 4996, "load_model", "self.model = model or model_loader.load_model("),
             ("model_executor/model_loader/base_loader.py", 56, "load_model", "model = initialize_model("),
             ("model_executor/layers/linear.py", 382, "__init__", "torch.empty(")],
    "profiling": [("v1/engine/core.py", 163, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
                  ("v1/engine/core.py", 310, "_initialize_kv_caches",
                   "available_gpu_memory = self.model_executor.determine_available_memory()"),
                  ("v1/worker/gpu_worker.py", 732, "determine_available_memory", "assert init_free_memory >= free_gpu_memory, (")],
    "kv_check": [("v1/engine/core.py", 163, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
                 ("v1/engine/core.py", 321, "_initialize_kv_caches", "kv_cache_configs = get_kv_cache_configs("),
                 ("v1/core/kv_cache_planning.py", 1551, "get_kv_cache_configs", "_check_enough_kv_cache_memory("),
                 ("v1/core/kv_cache_planning.py", 0, "_check_enough_kv_cache_memory", "raise ValueError(")],
    "auto_fit": [("v1/engine/core.py", 163, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
                 ("v1/engine/core.py", 321, "_initialize_kv_caches", "kv_cache_configs = get_kv_cache_configs("),
                 ("v1/core/kv_cache_planning.py", 1546, "get_kv_cache_configs", "_auto_fit_max_model_len("),
                 ("v1/core/kv_cache_planning.py", 1381, "_auto_fit_max_model_len", "raise ValueError(")],
    "kv_alloc": [("v1/engine/core.py", 163, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
                 ("v1/engine/core.py", 372, "_initialize_kv_caches", "self.model_executor.initialize_from_config(kv_cache_configs)"),
                 ("v1/worker/gpu_worker.py", 907, "initialize_from_config", "self.model_runner.initialize_kv_cache("),
                 ("v1/worker/gpu_model_runner.py", 7031, "initialize_kv_cache", "kv_caches = self.initialize_kv_cache_tensors("),
                 ("v1/worker/gpu_model_runner.py", 6930, "_allocate_kv_cache_tensors", "tensor = torch.zeros(")],
    "mamba": [("v1/engine/core.py", 163, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
              ("v1/engine/core.py", 372, "_initialize_kv_caches", "self.model_executor.initialize_from_config(kv_cache_configs)"),
              ("v1/worker/gpu_worker.py", 907, "initialize_from_config", "self.model_runner.initialize_kv_cache("),
              ("v1/worker/gpu_model_runner.py", 7012, "initialize_kv_cache", "self.initialize_attn_backend(kv_cache_config, is_profiling=is_profiling)"),
              ("v1/worker/gpu_model_runner.py", 6716, "initialize_attn_backend", "self._check_and_update_cudagraph_mode("),
              ("v1/worker/gpu_model_runner.py", 6786, "_check_and_update_cudagraph_mode", "cudagraph_mode = self.compilation_config.resolve_cudagraph_mode_and_sizes("),
              ("config/compilation.py", 1525, "resolve_cudagraph_mode_and_sizes", "raise ValueError(")],
    "graph": [("v1/engine/core.py", 163, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
              ("v1/engine/core.py", 389, "_initialize_kv_caches", "self.model_executor.compile_or_warm_up_model()"),
              ("v1/worker/gpu_worker.py", 994, "compile_or_warm_up_model", "cuda_graph_memory_bytes = self.model_runner.capture_model()"),
              ("v1/worker/gpu_model_runner.py", 6417, "capture_model", "self._capture_cudagraphs("),
              ("compilation/cuda_graph.py", 301, "__call__", "with torch.cuda.graph(")],
    "E": [("v1/engine/core.py", 163, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
          ("v1/engine/core.py", 389, "_initialize_kv_caches", "self.model_executor.compile_or_warm_up_model()"),
          ("v1/worker/gpu_worker.py", 1090, "compile_or_warm_up_model", "self.model_runner._dummy_sampler_run(hidden_states=last_hidden_states)"),
          ("v1/worker/gpu_model_runner.py", 5929, "_dummy_sampler_run", "raise RuntimeError(")],
}
_STAGE = {"external": "init_device", "D''": "init_device", "D": "init_device", "weights": "load",
          "profiling": "profiling", "A": "kv_check",
          "C'": "kv_check",
          "auto_fit": "auto_fit", "kv_alloc": "kv_alloc", "mamba": "mamba", "graph": "graph", "E": "E"}
_RAISE_LINE = {"external": 731, "D''": 741, "D": 762, "A": 57, "C'": 77}


# --------------------------------------------------------------------------- startup

def run_from_args(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run with parsed flags (see healing.tuning.simargs); ``--config`` is merged under the command line."""
    out, err = out or sys.stdout, err or sys.stderr
    if args.vllm_config:
        try:
            args = _merge_config(args, err)
        except ValueError as exc:
            err.write(f"error: {exc}\n")
            return 2
    args.model_name = args.model_tag or args.model or DEFAULT_MODEL  # vllm serve: the positional wins
    try:
        profile = load_profile(args.profile)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return 2
    if args.startup_delay is not None:
        profile = replace(profile, startup_delay_s=max(0.0, args.startup_delay))
    problem = _check_flags(args)
    if problem:
        err.write(f"error: {problem}\n")
        return 2
    config = SimConfig(args.gpu_memory_utilization, args.max_num_seqs, args.max_model_len, args.enforce_eager,
                       args.max_num_batched_tokens, args.kv_cache_memory_bytes, args.tensor_parallel_size,
                       args.enable_chunked_prefill, args.log_format)
    plan = plan_memory(profile, config)
    log = VllmLog(out, err, os.getpid(), args.log_format)
    if args.log_format == "0.10":
        return _run_010(args, profile, config, plan, log)
    return _run_modern(args, profile, config, plan, log)


def _check_flags(args: argparse.Namespace) -> str | None:
    if args.max_num_seqs is not None and args.max_num_seqs < 1:
        return "--max-num-seqs must be at least 1"
    if args.max_model_len is not None and (args.max_model_len < -1 or args.max_model_len == 0):
        return "--max-model-len must be a positive number of tokens, or auto / -1"
    if args.max_model_len == -1 and args.log_format == "0.10":
        return "--max-model-len auto / -1 needs --log-format 0.20 or later (vLLM 0.10 has no auto-fit)"
    if args.max_num_batched_tokens is not None and args.max_num_batched_tokens < 1:
        return "--max-num-batched-tokens must be at least 1"
    if args.kv_cache_memory_bytes is not None and args.kv_cache_memory_bytes < 0:
        return "--kv-cache-memory-bytes must not be negative"
    if args.tensor_parallel_size < 1:
        return "--tensor-parallel-size must be at least 1"
    if not 0 <= args.port <= 65535:
        return "--port must be 0-65535 (0 picks a free one)"
    if args.stats_interval <= 0 or args.sim_watchdog_interval < 0:
        return "--stats-interval must be > 0 and --sim-watchdog-interval ≥ 0"
    if args.sim_fail_after is not None and args.sim_fail_after < 0:
        return "--sim-fail-after must be ≥ 0 seconds"
    return None


def _merge_config(args: argparse.Namespace, err: TextIO) -> argparse.Namespace:
    """vLLM's precedence: command line > --config file > defaults."""
    parser = build_parser()
    known = parser._option_string_actions.__contains__  # noqa: SLF001 - the flags argparse knows
    argv, ignored = config_file_argv(args.vllm_config, known)
    for key in ignored:
        err.write(f"simulator: --config key {key!r} is not modelled by the simulator; ignored\n")

    def refuse(message: str) -> NoReturn:
        raise ValueError(f"--config: {args.vllm_config}: {message}")

    parser.error = refuse  # type: ignore[method-assign] - one line, not argparse's usage text
    from_file = parser.parse_args(argv)
    cli = set(getattr(args, EXPLICIT, None) or ())
    merged = argparse.Namespace(**vars(args))
    for dest in set(getattr(from_file, EXPLICIT, None) or ()) - cli - {"vllm_config", "model_tag"}:
        setattr(merged, dest, getattr(from_file, dest))
    return merged


def _non_default(args: argparse.Namespace, config: SimConfig, fmt: str) -> dict[str, Any]:
    # vLLM lists what differs from its parser's defaults (0.10: as the simulator always printed it)
    non_default: dict[str, Any] = {}
    if args.model_tag is not None or fmt == "0.10":
        non_default["model_tag"] = args.model_tag
    if args.host is not None or fmt == "0.10":
        non_default["host"] = args.host
    if args.port != 8000 or fmt == "0.10":
        non_default["port"] = args.port
    if args.model_tag is not None or args.model is not None or fmt == "0.10":
        non_default["model"] = args.model_name
    if args.served_model_name:
        non_default["served_model_name"] = list(args.served_model_name)
    if config.max_model_len is not None:
        non_default["max_model_len"] = config.max_model_len
    if config.gpu_memory_utilization is not None and config.gpu_memory_utilization != default_gmu(fmt):
        non_default["gpu_memory_utilization"] = float(config.gpu_memory_utilization)
    if config.kv_cache_memory_bytes is not None:
        non_default["kv_cache_memory_bytes"] = config.kv_cache_memory_bytes
    if config.max_num_seqs is not None and (fmt != "0.10" or config.max_num_seqs != 256):
        non_default["max_num_seqs"] = config.max_num_seqs
    if config.max_num_batched_tokens is not None:
        non_default["max_num_batched_tokens"] = config.max_num_batched_tokens
    if config.enable_chunked_prefill is not None:
        non_default["enable_chunked_prefill"] = config.enable_chunked_prefill
    if config.tensor_parallel_size != 1:
        non_default["tensor_parallel_size"] = config.tensor_parallel_size
    if config.enforce_eager:
        non_default["enforce_eager"] = True
    return non_default


def _run_010(args: argparse.Namespace, profile: GpuProfile, config: SimConfig, plan: MemoryPlan, log: VllmLog) -> int:
    """vLLM 0.10.2's startup, line for line as the simulator printed it before the 0.33 format existed."""
    version = VERSIONS["0.10"]
    pause = profile.startup_delay_s / 8
    if args.host is None:
        args.host = "127.0.0.1"
    log.log("APIServer", "INFO", "entrypoints/openai/api_server.py:1896", f"vLLM API server version {version}")
    log.log("APIServer", "INFO", "entrypoints/utils.py:328", f"non-default args: {_non_default(args, config, '0.10')!r}")
    if plan.failure in ("I", "J", "batched_len", "batched_seqs"):
        frames = [("engine/arg_utils.py", 1161, "create_engine_config", "cache_config = CacheConfig("),
                  ("config/cache.py", 146, "_verify_args", "raise ValueError(")]
        log.raw("APIServer", _traceback(frames, f"ValueError: {plan.message}"))
        return 1
    log.log("APIServer", "INFO", "config/__init__.py:1815", f"Using max model len {plan.max_model_len}")
    time.sleep(pause)
    log.log("EngineCore_DP0", "INFO", "v1/engine/core.py:654", "Waiting for init message from front-end.")
    log.log("EngineCore_DP0", "INFO", "v1/engine/core.py:76",
            f"Initializing a V1 LLM engine (v{version}) with config: model='{args.model_name}', dtype=torch.bfloat16, "
            f"max_seq_len={plan.max_model_len}, tensor_parallel_size={plan.tensor_parallel_size}, "
            f"enforce_eager={config.enforce_eager}, seed={args.seed}")
    log.log("EngineCore_DP0", "INFO", "distributed/parallel_state.py:1165",
            "rank 0 in world size 1 is assigned as DP rank 0, PP rank 0, TP rank 0, EP rank 0")
    if plan.failure == "D":
        return _engine_failure_010(log, plan, "ValueError")
    time.sleep(pause)
    log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:2338", f"Starting to load model {args.model_name}...")
    time.sleep(pause * 2)
    log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:2392",
            f"Model loading took {plan.weights_bytes / GIB:.4f} GiB and {pause * 2:.6f} seconds")
    time.sleep(pause)
    gmu = plan.gpu_memory_utilization
    log.log("EngineCore_DP0", "DEBUG", "v1/worker/gpu_worker.py:263",
            f"Memory profiling takes {pause:.2f} seconds\n"
            f"the current vLLM instance can use total_gpu_memory ({plan.total_bytes / GIB:.2f}GiB) x gpu_memory_utilization "
            f"({float(gmu):.2f}) = {plan.requested_bytes / GIB:.2f}GiB\n"
            f"model weights take {plan.weights_bytes / GIB:.2f}GiB; non_torch_memory takes {float(profile.non_torch_gib):.2f}GiB; "
            f"PyTorch activation peak memory takes {float(profile.activation_peak_gib):.2f}GiB; the rest of the memory "
            f"reserved for KV Cache is {plan.kv_available_bytes / GIB:.2f}GiB.")
    log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_worker.py:276", f"Available KV cache memory: {plan.kv_available_bytes / GIB:.2f} GiB")
    if plan.failure == "profiling":
        return _engine_failure_010(log, plan, "AssertionError")
    if plan.failure in ("A", "C'"):
        return _engine_failure_010(log, plan, "ValueError")
    log.log("EngineCore_DP0", "INFO", "v1/core/kv_cache_utils.py:1028", f"GPU KV cache size: {plan.kv_tokens:,} tokens")
    log.log("EngineCore_DP0", "INFO", "v1/core/kv_cache_utils.py:1032",
            f"Maximum concurrency for {plan.max_model_len:,} tokens per request: {plan.max_concurrency:.2f}x")
    if not config.enforce_eager:
        log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:3047",
                "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 0%|          | 0/67 [00:00<?, ?it/s]")
        time.sleep(pause)
        if plan.failure == "graph":
            return _engine_failure_010(log, plan, "RuntimeError")
        log.log("EngineCore_DP0", "INFO", "v1/worker/gpu_model_runner.py:3118",
                f"Graph capturing finished in {max(1, round(pause * 8))} secs, took {plan.graph_bytes / GIB:.2f} GiB")
    if plan.failure == "E":
        return _engine_failure_010(log, plan, "RuntimeError", profile=profile)
    log.log("EngineCore_DP0", "INFO", "v1/engine/core.py:218",
            f"init engine (profile, create kv cache, warmup model) took {profile.startup_delay_s:.2f} seconds")
    return _serve(args, profile, plan, log, None)


def _engine_failure_010(log: VllmLog, plan: MemoryPlan, exc_type: str, profile: GpuProfile | None = None) -> int:
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
            torch_oom(plan.sampler_bytes, plan.total_bytes, free_now, this))
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


# ----- 0.20 / 0.33

_LOGO = ("\n       █     █     █▄   ▄█\n"
         " ▄▄ ▄█ █     █     █ ▀▄▀ █  version {version}\n"
         "  █▄█▀ █     █     █     █  model   {model}\n"
         "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\n")


def _where(fmt: str, key: str) -> str:
    """[file:line] of a log call in vLLM 0.33.0 (0.20.0's where it differs)."""
    table_033 = {"banner": "startup.py:38", "args": "startup.py:96", "maxlen": "model.py:2170",
                 "chunked": "scheduler.py:310", "init": "core.py:139", "rank": "parallel_state.py:2385",
                 "load_start": "gpu_model_runner.py:4978", "load_done": "gpu_model_runner.py:5088",
                 "load_failed": "gpu_model_runner.py:5086",
                 "external": "utils.py:751", "kv_flag": "gpu_worker.py:676", "cg_profile": "gpu_model_runner.py:6304",
                 "cg_estimate": "gpu_model_runner.py:6409", "kv_avail": "gpu_worker.py:772",
                 "cg_enabled": "gpu_worker.py:787", "autofit_full": "kv_cache_planning.py:1395",
                 "autofit_reduced": "kv_cache_planning.py:1404", "kv_size": "kv_cache_utils.py:1147",
                 "capture_done": "gpu_model_runner.py:6516", "cg_pool": "gpu_worker.py:1003",
                 "suggest": "gpu_worker.py:1066", "init_done": "core.py:412", "fatal": "core.py:1586",
                 "start_failed": "core.py:1584", "tasks": "entry.py:135", "serving": "entry.py:139",
                 "route": "launcher.py:197", "output_handler": "async_llm.py:943", "stats": "loggers.py:335",
                 "shutdown": "launcher.py:306"}
    table_020 = {"banner": "utils.py:297", "args": "utils.py:233", "maxlen": "model.py:1713",
                 "init": "core.py:105", "rank": "parallel_state.py:1395", "load_start": "gpu_model_runner.py:4735",
                 "load_done": "gpu_model_runner.py:4829", "load_failed": "gpu_model_runner.py:4877",
                 "cg_estimate": "gpu_model_runner.py:6042",
                 "kv_avail": "gpu_worker.py:440", "cg_enabled": "gpu_worker.py:455", "kv_size": "kv_cache_utils.py:1711",
                 "kv_conc": "kv_cache_utils.py:1716", "init_done": "core.py:281", "fatal": "core.py:1100",
                 "start_failed": "core.py:1098", "serving": "api_server.py:602", "stats": "loggers.py:271",
                 "output_handler": "async_llm.py:707"}
    if fmt == "0.20":
        return table_020[key] if key in table_020 else table_033[key]
    return table_033[key]


def _capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default CUDA graph capture sizes: [1, 2, 4] + 8..248 by 8 + 256.. by 16, up to 2 × max_num_seqs ≤ 512."""
    largest = min(max_num_seqs * 2, 512)
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, largest + 1, 16))
    return [s for s in sizes if s <= largest]


def _run_modern(args: argparse.Namespace, profile: GpuProfile, config: SimConfig, plan: MemoryPlan, log: VllmLog) -> int:
    """vLLM 0.33.0's (or 0.20.0's) startup: API server checks, EngineCore, per-rank workers, then serving."""
    fmt, version = plan.log_format, plan.version
    w = lambda key: _where(fmt, key)  # noqa: E731 - a short local alias
    pause = profile.startup_delay_s / 8
    api = "APIServer"
    if os.environ.get("VLLM_DISABLE_LOG_LOGO", "0") not in ("", "0"):
        log.log(api, "INFO", w("banner"), f"vLLM server version {version}, serving model {args.model_name}")
    else:
        log.log(api, "INFO", w("banner"), _LOGO.format(version=version, model=args.model_name))
    log.log(api, "INFO", w("args"), f"non-default args: {_non_default(args, config, fmt)!r}")
    # the API server binds its port before the engine starts (a port in use fails here); a configuration that
    # fails anyway is simulated without the port, so failure logs can be made while the service holds it
    try:
        sock = _bind(args.host, args.port) if plan.ok else None
    except OSError as exc:
        log.raw(api, _traceback([("entrypoints/launchers/launcher.py", 379, "setup_server",
                                   "sock = create_server_socket(sock_addr, reuse_port=reuse_port)"),
                                  ("entrypoints/launchers/launcher.py", 353, "create_server_socket", "sock.bind(addr)")],
                                 f"OSError: [Errno {exc.errno}] {exc.strerror}"))
        return 1
    try:
        if plan.failure in ("I", "J", "batched_len", "batched_seqs"):
            which = {"I": "CacheConfig", "J": "ModelConfig"}.get(plan.failure, "SchedulerConfig")
            assert plan.message is not None
            detail = plan.message if plan.failure == "I" else (
                f"1 validation error for {which}\n  Value error, {plan.message} [type=value_error, "
                f"input_value=ArgsKwargs(()), input_type=ArgsKwargs]\n"
                f"    For further information visit https://errors.pydantic.dev/2.12/v/value_error")
            frames = [("entrypoints/launchers/api_server/entry.py", 185, "run_server_worker",
                       "async with build_async_engine_client("),
                      ("engine/arg_utils.py", 2013, "create_engine_config",
                       f"{which[0].lower() + which[1:-6]}_config = {which}(")]
            log.raw(api, _traceback(frames, f"pydantic_core._pydantic_core.ValidationError: {detail}"))
            return 1
        log.log(api, "INFO", w("maxlen"), f"Using max model len {plan.max_model_len if not plan.auto_fit else plan.model_max_len}")
        if plan.chunked_prefill:
            log.log(api, "INFO", w("chunked"), f"Chunked prefill is enabled with max_num_batched_tokens={plan.max_num_batched_tokens}.")
        time.sleep(pause)
        return _engine_startup(args, profile, config, plan, log, sock, pause)
    finally:
        if sock is not None:
            sock.close()


def _bind(host: str | None, port: int) -> Any:
    import socket

    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or "", port))
    except OSError:
        sock.close()
        raise
    return sock


def _engine_startup(args: argparse.Namespace, profile: GpuProfile, config: SimConfig, plan: MemoryPlan,
                    log: VllmLog, sock: Any, pause: float) -> int:
    fmt = plan.log_format
    w = lambda key: _where(fmt, key)  # noqa: E731
    core = "EngineCore"
    tp = plan.tensor_parallel_size
    workers = [core] if tp == 1 else [f"Worker_TP{r}" for r in range(tp)]
    log.log(core, "INFO", w("init"),
            f"Initializing a V1 LLM engine (v{plan.version}) with config: model='{args.model_name}', "
            f"speculative_config=None, tokenizer='{args.model_name}', dtype=torch.bfloat16, "
            f"max_seq_len={plan.max_model_len if not plan.auto_fit else plan.model_max_len}, "
            f"tensor_parallel_size={tp}, pipeline_parallel_size=1, data_parallel_size=1, "
            f"enforce_eager={config.enforce_eager}, kv_cache_dtype=auto, device_config=cuda, seed={args.seed}, "
            f"served_model_name={_served(args)[0]}, enable_prefix_caching=True, enable_chunked_prefill={plan.chunked_prefill}")
    for rank, proc in enumerate(workers):
        log.log(proc, "INFO", w("rank"), f"rank {rank} in world size {tp} is assigned as DP rank 0, PP rank 0, "
                                         f"PCP rank 0, TP rank {rank}, ETP rank {rank}, EP rank {rank}, EPLB rank N/A")
    if plan.failure in ("external", "D''", "D"):
        return _engine_failure(log, plan, profile, workers)
    if plan.external_bytes:
        for proc in workers:
            log.log(proc, "INFO", w("external"),
                    f"Weights are held outside this process: of the {_r2(plan.requested_bytes)} GiB utilization budget, "
                    f"{_r2(plan.external_bytes)} GiB is externally held and "
                    f"{_r2(plan.requested_bytes - plan.external_bytes)} GiB remains for the engine's own allocations.")
    time.sleep(pause)
    log.log(workers[0], "INFO", w("load_start"), f"Starting to load model {args.model_name}...")
    time.sleep(pause * 2)
    if plan.failure == "weights":
        for proc in workers:
            log.log(proc, "ERROR", w("load_failed"), f"{plan.message} (original error: "
                                                     f"{_weights_oom(plan, profile).split(': ', 1)[1]})")
        return _engine_failure(log, plan, profile, workers)
    for proc in workers:
        log.log(proc, "INFO", w("load_done"),
                f"Model loading took {_r2(plan.weights_bytes)} GiB memory and {pause * 2:.6f} seconds")
    time.sleep(pause)
    if plan.kv_from_flag:
        free_now = plan.free_bytes - plan.weights_bytes - _bytes(profile.non_torch_gib)
        for proc in workers:
            log.log(proc, "INFO", w("kv_flag"),
                    f"Initial free memory {_r2(free_now)} GiB, reserved {_r2(plan.kv_available_bytes)} GiB memory for KV "
                    f"Cache as specified by kv_cache_memory_bytes config and skipped memory profiling. This does not "
                    f"respect the gpu_memory_utilization config. Only use kv_cache_memory_bytes config when you want "
                    f"manual control of KV cache memory size. If OOM'ed, check the difference of initial free memory "
                    f"between the current run and the previous run where kv_cache_memory_bytes is suggested and update "
                    f"it correspondingly.")
    else:
        sizes = _capture_sizes(plan.max_num_seqs)
        full = [s for s in sizes if s <= plan.max_num_seqs]
        for proc in workers:
            if plan.graph_bytes and fmt == "0.33":
                log.log(proc, "INFO", w("cg_profile"), f"Profiling CUDA graph memory: PIECEWISE={len(sizes)} "
                                                       f"(largest={sizes[-1]}), FULL={len(full)} (largest={full[-1]})")
            if plan.graph_bytes:
                log.log(proc, "INFO", w("cg_estimate"), f"Estimated CUDA graph memory: {plan.graph_bytes / GIB:.2f} GiB total")
            if plan.failure == "profiling":
                return _engine_failure(log, plan, profile, workers)
            log.log(proc, "INFO", w("kv_avail"), f"Available KV cache memory: {_r2(plan.kv_available_bytes)} GiB")
            if plan.graph_bytes:
                gmu = float(plan.gpu_memory_utilization)
                delta = plan.graph_bytes / plan.total_bytes
                log.log(proc, "INFO", w("cg_enabled"),
                        f"CUDA graph memory profiling is enabled (default since v0.21.0). The current "
                        f"--gpu-memory-utilization={gmu:.4f} is equivalent to --gpu-memory-utilization="
                        f"{round(gmu - delta, 4):.4f} without CUDA graph memory profiling. To maintain the same effective "
                        f"KV cache size as before, increase --gpu-memory-utilization to {min(round(gmu + delta, 4), 1.0):.4f}. "
                        f"To disable, set VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0.")
    if plan.failure in ("A", "C'", "auto_fit"):
        return _engine_failure(log, plan, profile, workers)
    kv_device = f"{_r2(plan.kv_available_bytes - (plan.bytes_per_block if fmt == '0.33' else 0))} GiB GPU"
    if plan.auto_fit == "full":
        log.log(core, "INFO", w("autofit_full"), f"Auto-fit max_model_len: full model context length "
                                                  f"{plan.max_model_len} fits in available KV cache memory ({kv_device})")
    elif plan.auto_fit == "reduced":
        log.log(core, "INFO", w("autofit_reduced"), f"Auto-fit max_model_len: reduced from {plan.model_max_len} to "
                                                     f"{plan.max_model_len} to fit in available KV cache memory ({kv_device})")
    if fmt == "0.33":
        log.log(core, "INFO", w("kv_size"), f"GPU KV cache size: {plan.kv_tokens:,} tokens, Maximum concurrency for "
                                            f"{plan.max_model_len:,} tokens per request: {plan.max_concurrency:.2f}x")
    else:
        log.log(core, "INFO", w("kv_size"), f"GPU KV cache size: {plan.kv_tokens:,} tokens")
        log.log(core, "INFO", w("kv_conc"), f"Maximum concurrency for {plan.max_model_len:,} tokens per request: "
                                            f"{plan.max_concurrency:.2f}x")
    if plan.failure in ("kv_alloc", "mamba"):
        return _engine_failure(log, plan, profile, workers)
    if not config.enforce_eager:
        time.sleep(pause)
        if plan.failure == "graph":
            return _engine_failure(log, plan, profile, workers)
        for proc in workers:
            log.log(proc, "INFO", w("capture_done"),
                    f"Graph capturing finished in {max(1, round(pause * 8))} secs, took {plan.graph_bytes / GIB:.2f} GiB")
            if plan.graph_in_budget and plan.graph_bytes and fmt == "0.33":
                log.log(proc, "INFO", w("cg_pool"), f"CUDA graph pool memory: {_r2(plan.graph_bytes)} GiB (actual), "
                                                    f"{_r2(plan.graph_bytes)} GiB (estimated), difference: 0.0 GiB (0.0%).")
    if plan.failure == "E":
        return _engine_failure(log, plan, profile, workers)
    if fmt == "0.33" and not plan.kv_from_flag:
        consumed = plan.weights_bytes + _bytes(profile.non_torch_gib)
        peak = _bytes(profile.activation_peak_gib) + plan.graph_bytes  # the estimate counts as activation
        non_kv = consumed + peak + plan.graph_bytes
        to_requested = plan.requested_bytes - plan.external_bytes - non_kv - 150 * (1 << 20)
        to_gpu = plan.free_bytes - non_kv - 150 * (1 << 20)
        for proc in workers:
            log.log(proc, "INFO", w("suggest"),
                    f"Free memory on device ({_r2(plan.free_bytes)}/{_r2(plan.total_bytes)} GiB) on startup. Desired GPU "
                    f"memory utilization is ({_flag_float(plan.gpu_memory_utilization)}, "
                    f"{_r2(plan.requested_bytes - plan.external_bytes)} GiB). Actual usage is {_r2(consumed)} GiB for "
                    f"consumed memory (weights + non-torch), {_r2(peak)} GiB for peak activation, and "
                    f"{_r2(plan.graph_bytes)} GiB for CUDAGraph memory. Replace gpu_memory_utilization config with "
                    f"`--kv-cache-memory={to_requested}` ({_r2(to_requested)} GiB) to fit into requested memory, or "
                    f"`--kv-cache-memory={to_gpu}` ({_r2(to_gpu)} GiB) to fully utilize gpu memory. Current kv cache "
                    f"memory in use is {_r2(plan.kv_available_bytes)} GiB.")
    log.log(core, "INFO", w("init_done"),
            f"init engine (profile, create kv cache, warmup model) took {profile.startup_delay_s:.2f} s"
            if fmt == "0.33" else
            f"init engine (profile, create kv cache, warmup model) took {profile.startup_delay_s:.2f} seconds")
    return _serve(args, profile, plan, log, sock)


def _weights_oom(plan: MemoryPlan, profile: GpuProfile) -> str:
    """Torch's OOM while loading: the weights loaded so far (whole GiB) and the rest that did not fit."""
    room = plan.free_bytes - _bytes(profile.non_torch_gib)
    loaded = max(room, 0) // GIB * GIB
    return torch_oom(plan.weights_bytes - loaded, plan.total_bytes, room - loaded, loaded + _bytes(profile.non_torch_gib))


def _served(args: argparse.Namespace) -> list[str]:
    return list(args.served_model_name) if args.served_model_name else [args.model_name]


def _engine_failure(log: VllmLog, plan: MemoryPlan, profile: GpuProfile, workers: list[str]) -> int:
    """A startup failure as vLLM 0.33 prints it: the engine's logged traceback ("EngineCore failed to start."),
    the raw traceback of its process, then the API server's "Engine core initialization failed"."""
    assert plan.failure is not None and plan.message is not None
    fmt = plan.log_format
    stage = _STAGE[plan.failure]
    frames = list(_FRAMES_033["start"]) + [
        (f, _RAISE_LINE.get(plan.failure, n) if n == 0 else n, fn, code) for f, n, fn, code in _FRAMES_033[stage]]
    body = ""
    if plan.failure == "E":
        this = plan.weights_bytes + _bytes(profile.non_torch_gib) + plan.num_gpu_blocks * plan.bytes_per_block + plan.graph_bytes
        cause = _traceback(
            [("v1/worker/gpu_model_runner.py", 5918, "_dummy_sampler_run", "sampler_output = self.sampler("),
             ("v1/sample/sampler.py", 101, "forward", "logits = self.apply_temperature(")],
            torch_oom(plan.sampler_bytes, plan.total_bytes, plan.sampler_free_bytes, this))
        body = cause + "\n\nThe above exception was the direct cause of the following exception:\n\n"
        exc = f"RuntimeError: {plan.message}"
    elif plan.failure == "weights":
        exc = _weights_oom(plan, profile)
    elif plan.failure == "kv_alloc":
        in_use = plan.weights_bytes + _bytes(profile.non_torch_gib)
        exc = torch_oom(plan.kv_available_bytes, plan.total_bytes, plan.free_at_kv_bytes - in_use, in_use)
    elif plan.failure == "profiling":
        exc = f"AssertionError: {plan.message}"
    elif plan.failure == "graph":
        exc = ("RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some "
               "other API call, so the stacktrace below might be incorrect.\nFor debugging consider passing "
               "CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
    else:
        exc = f"ValueError: {plan.message}"
    text = body + _traceback(frames, exc)
    if len(workers) > 1 and stage not in ("kv_check", "auto_fit"):
        # multiproc executor: the ranks raise, the engine re-raises (v1/executor/multiproc_executor.py)
        worker_frames = [("v1/executor/multiproc_executor.py", 1040, "worker_main", "worker = WorkerProc(*args, **kwargs)")]
        if stage in ("init_device", "load"):
            worker_text = _traceback(worker_frames + [f for f in frames if f[0] != "v1/engine/core.py"
                                                      and "executor" not in f[0]], exc)
            for proc in workers:
                log.log(proc, "ERROR", "multiproc_executor.py:1057", "WorkerProc failed to start.\n" + worker_text)
            exc = ("Exception: WorkerProc initialization failed due to an exception in a background process. "
                   "See stack trace for root cause.")
            frames = list(_FRAMES_033["start"]) + [
                ("v1/engine/core.py", 150, "__init__", "self.model_executor = executor_class(vllm_config)"),
                ("v1/executor/multiproc_executor.py", 246, "_init_executor", "self.workers = WorkerProc.wait_for_ready(unready_workers)"),
                ("v1/executor/multiproc_executor.py", 933, "wait_for_ready", "raise e from None")]
        else:
            for proc in workers:
                log.log(proc, "ERROR", "multiproc_executor.py:1189", "WorkerProc hit an exception.\n" + body
                        + _traceback([f for f in frames if f[0] != "v1/engine/core.py"], exc))
            reason = exc.split(": ", 1)[1].split("\n", 1)[0]
            exc = (f"RuntimeError: Worker failed with error '{reason}', please check the stack trace above for the "
                   f"root cause")
            frames = list(_FRAMES_033["start"]) + [f for f in frames if f[0] == "v1/engine/core.py"][2:] + [
                ("v1/executor/multiproc_executor.py", 525, "collective_rpc", "raise RuntimeError(")]
        text = _traceback(frames, exc)
    log.log("EngineCore", "ERROR", _where(fmt, "start_failed"), "EngineCore failed to start.\n" + text)
    log.raw("EngineCore", "Process EngineCore:\n" + text)
    log.raw("APIServer", _traceback(
        [("entrypoints/launchers/api_server/entry.py", 185, "run_server_worker", "async with build_async_engine_client("),
         ("v1/engine/utils.py", 1473, "wait_for_engine_startup", "raise RuntimeError(")],
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}"))
    return 1


def _serve(args: argparse.Namespace, profile: GpuProfile, plan: MemoryPlan, log: VllmLog, sock: Any) -> int:
    from healing.tuning.sim_server import SimulatedServer

    server = SimulatedServer(args, profile, plan, log, sock)

    def stop(signum: int, _frame: Any) -> None:
        server.terminate()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    return server.serve()


# --------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m healing.tuning.simulator", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the simulator; returns the exit status (1 on a simulated vLLM failure, 2 on bad flags)."""
    try:
        args = build_parser().parse_args(normalize_argv(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_from_args(args, out, err)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["GpuProfile", "MemoryPlan", "PROFILES", "SimConfig", "batch_defaults", "default_gmu", "load_profile", "main",
           "plan_memory"]
