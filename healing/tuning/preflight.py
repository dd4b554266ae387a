"""Pre-flight: reject candidates that cannot fit in GPU memory before spending canary time on them.

Where the GPU picture comes from (``tuning.preflight.gpu_source``; ``auto`` tries them in this order):

* ``nvml``        pynvml, when importable and a GPU answers (total and used memory of GPU 0);
* ``nvidia-smi``  ``nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits``;
* ``message``     the numbers of the triggering log message (free/total GiB of "Free memory on device",
                  PyTorch's "total capacity … of which … is free", minus the failing process's own use);
* ``profile``     ``tuning.gpu_profile`` (total, resident services, model weights, activation/overhead).

Memory held by other processes ("resident") is taken as fixed: a candidate's budget
``gmu × total`` must fit into ``total − resident`` (minus ``margin_gib``), and where the model's
weights and overhead are known, must leave a KV cache larger than zero. The reason always cites the
numbers, e.g. the seed's "gpu_memory_utilization 0.6 asks for 7.20 GiB … leave 6.07 GiB: 1155 MiB short".

Pre-flight also checks *length*, as vLLM's ``check_enough_kv_cache_memory`` does: the candidate's KV
budget must hold one request of its ``max_model_len`` (``ceil(len/block_size)`` blocks of
``block_size × bytes_per_token``), and ``max_model_len`` must not exceed the model's own limit. The
budget comes, in this order, from the KV size the triggering message printed at the running gmu,
moved by ``(gmu_candidate − gmu_running) × total``; or from the profile: ``gmu × total − weights −
activation/overhead − CUDA graphs`` (graphs count inside the budget from vLLM 0.21 on; an older
simulator profile checks them against the free memory outside the budget instead). Bytes per token
come from ``tuning.gpu_profile.kv_bytes_per_token`` or, approximately, from the message's "needed" size.
A rejection cites the arithmetic: "max_model_len 8192 needs 1.00 GiB of KV cache (8,192 tokens ×
128 KiB/token), gpu_memory_utilization 0.9 leaves 0.68 GiB (…): 2,672 tokens short".

When the canary runs on production's GPU (``tuning.preflight.canary_shares_gpu``), production's memory
counts as resident: its running gmu × total, or what NVML / nvidia-smi report as used. Every reason then
says so ("production holds 14.18 GiB on this GPU …; the canary must fit beside it").
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, to_decimal
from healing.tuning.catalogue import version_tuple
from healing.tuning.runner_config import GpuProfileSettings, RunnerSettings

MIB_PER_GIB = Decimal(1024)
GIB_BYTES = Decimal(1024**3)
PRINT_SLACK_GIB = Decimal("0.005")  # half of the 0.01 GiB resolution of the sizes vLLM prints
TWO = Decimal("0.01")


@dataclass(frozen=True)
class GpuMemory:
    """The memory picture pre-flight judges against (GiB)."""

    total_gib: Decimal
    resident_gib: Decimal
    weights_gib: Decimal | None
    overhead_gib: Decimal | None
    source: str

    @property
    def free_gib(self) -> Decimal:
        return self.total_gib - self.resident_gib

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "total_gib": float(self.total_gib), "resident_gib": float(self.resident_gib),
                "weights_gib": float(self.weights_gib) if self.weights_gib is not None else None,
                "overhead_gib": float(self.overhead_gib) if self.overhead_gib is not None else None}


@dataclass(frozen=True)
class PreflightResult:
    ok: bool
    reason: str


def _g(d: Decimal) -> str:
    return f"{d.quantize(TWO)}"


def from_nvml() -> GpuMemory | None:
    """GPU 0's total/used memory through pynvml; None when pynvml or a GPU is missing."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError has many subclasses; any of them means "no usable GPU here"
        return None
    gib = Decimal(1024**3)
    return GpuMemory(Decimal(info.total) / gib, Decimal(info.used) / gib, None, None, "nvml")


def from_nvidia_smi(run: Callable[..., Any] = subprocess.run) -> GpuMemory | None:
    """GPU 0's total/used memory (MiB) from nvidia-smi; None when it is absent or says nothing usable."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = run([exe, "--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"],
                   capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    try:
        total_mib, used_mib = (Decimal(x.strip()) for x in proc.stdout.strip().splitlines()[0].split(",")[:2])
    except (ValueError, ArithmeticError):
        return None
    return GpuMemory(total_mib / MIB_PER_GIB, used_mib / MIB_PER_GIB, None, None, "nvidia-smi")


def from_message(values: Mapping[str, Any]) -> GpuMemory | None:
    """Free/total from the triggering message; the failing process's own memory is not resident."""
    if values.get("total_gib") is None or values.get("free_gib") is None:
        return None
    total, free = to_decimal(values["total_gib"]), to_decimal(values["free_gib"])
    own = to_decimal(values["process_gib"]) if values.get("process_gib") is not None else Decimal(0)
    resident = max(total - free - own, Decimal(0))
    return GpuMemory(total, resident, None, None, "message")


def from_profile(profile: GpuProfileSettings | None) -> GpuMemory | None:
    if profile is None:
        return None
    return GpuMemory(profile.total_gib, profile.resident_gib, profile.weights_gib, profile.overhead_gib, f"profile {profile.name}")


def gpu_memory(source: str, values: Mapping[str, Any], profile: GpuProfileSettings | None,
               *, nvml: Callable[[], GpuMemory | None] = from_nvml,
               smi: Callable[[], GpuMemory | None] = from_nvidia_smi) -> GpuMemory | None:
    """The GPU picture from the configured source (``auto``: NVML, nvidia-smi, message, profile)."""
    probes: dict[str, Callable[[], GpuMemory | None]] = {
        "nvml": nvml, "nvidia-smi": smi, "message": lambda: from_message(values), "profile": lambda: from_profile(profile)}
    order = list(probes) if source == "auto" else [source]
    for name in order:
        found = probes[name]()
        if found is not None:
            if found.weights_gib is None and profile is not None:
                # live sources know the card, not the model: the profile supplies weights and overhead
                found = GpuMemory(found.total_gib, found.resident_gib, profile.weights_gib, profile.overhead_gib, found.source)
            return found
    return None


# --------------------------------------------------------------------------- KV capacity

@dataclass(frozen=True)
class KvModel:
    """What turns a candidate's budget into KV capacity and one request's need (all optional)."""

    bytes_per_token: int | None = None       # KV cache bytes per token, all layers
    bytes_per_token_from: str = ""           # where it came from, for the reason ("profile tight", "≈ from the message")
    block_size: int = 16
    model_max_len: int | None = None         # the model's own limit (max_position_embeddings)
    graph_gib: Decimal | None = None         # CUDA graph memory
    graph_in_budget: bool = True             # vLLM ≥ 0.20 profiles graphs and takes them from the KV budget
    printed_kv_gib: Decimal | None = None    # the KV budget vLLM printed for the failing start …
    printed_gmu: Decimal | None = None       # … at this gpu_memory_utilization
    version: tuple[int, int] | None = None   # the service's vLLM (major, minor) when known

    @property
    def request_ceiled(self) -> bool:
        """vLLM ≥ 0.20 requests ceil(total × gmu) bytes (v1/worker/utils.py request_memory), older ones floor."""
        return self.version is not None and self.version >= (0, 20)

    @property
    def null_block(self) -> bool:
        """vLLM 0.33 plans against usable blocks: the null block the pool holds back is not KV capacity
        (v1/core/kv_cache_planning.py, check_memory = available − one block)."""
        return self.version is not None and self.version >= (0, 33)


def _major_minor(text: Any) -> tuple[int, int] | None:
    """(major, minor) of a version string such as "0.33.0" (the catalogue's reading); None when it is not one."""
    parts = version_tuple(str(text)) if text else ()
    return (parts[0], parts[1]) if len(parts) >= 2 else None


def kv_model(values: Mapping[str, Any], current: Mapping[str, Decimal], profile: GpuProfileSettings | None) -> KvModel:
    """The KV model of one intent: the printed KV size of its message first, the GPU profile for the rest.

    The message's KV size at the running gmu: ``available_gib`` of "To serve at least one request …"
    (with its ``needed_gib`` for ``max_model_len`` tokens), minus ``deficit_gib`` of "No available
    memory for the cache blocks" (a multimodal reservation's ``reserved_gib`` is not a KV budget), or
    V0's ``kv_cache_tokens`` × bytes per token.
    """
    printed: Decimal | None = None
    if values.get("needed_gib") is not None and values.get("available_gib") is not None:
        printed = to_decimal(values["available_gib"])
    elif values.get("deficit_gib") is not None and values.get("reserved_gib") is None:
        printed = -to_decimal(values["deficit_gib"])
    gmu_raw = values.get("gpu_memory_utilization", current.get(GMU))
    gmu = to_decimal(gmu_raw) if gmu_raw is not None else None
    block = profile.block_size if profile is not None else 16
    # the log's own vLLM version first (the Observer's _version), else the profile's
    version = _major_minor(values.get("_version")) or (_major_minor(profile.vllm_version) if profile is not None else None)
    in_budget = profile.graph_in_budget if profile is not None else True
    if version is not None:
        in_budget = version >= (0, 20)
    bpt, bpt_from = (profile.kv_bytes_per_token, f"profile {profile.name}") if profile is not None else (None, "")
    if bpt is None and values.get("needed_gib") is not None and values.get("max_model_len"):
        tokens = -(-int(values["max_model_len"]) // block) * block
        needed = to_decimal(values["needed_gib"]) * GIB_BYTES
        if needed > 0:
            bpt, bpt_from = int(needed / tokens), f"≈ from the printed {_g(to_decimal(values['needed_gib']))} GiB for {tokens:,} tokens"
    if printed is None and values.get("kv_cache_tokens") is not None and bpt:
        # V0's "… larger than the maximum number of tokens that can be stored in KV cache (N)": N tokens of budget
        printed = Decimal(int(values["kv_cache_tokens"]) * bpt) / GIB_BYTES
    return KvModel(bytes_per_token=bpt, bytes_per_token_from=bpt_from, block_size=block,
                   model_max_len=profile.model_max_len if profile is not None else None,
                   graph_gib=profile.graph_gib if profile is not None else None,
                   graph_in_budget=in_budget, version=version,
                   printed_kv_gib=printed if gmu is not None else None, printed_gmu=gmu if printed is not None else None)


def _b(gib: Decimal) -> int:
    return int((gib * GIB_BYTES).to_integral_value(rounding=ROUND_FLOOR))


def _gb(nbytes: int) -> str:
    return _g(Decimal(nbytes) / GIB_BYTES)


def _per_token(nbytes: int) -> str:
    kib = Decimal(nbytes) / 1024
    return f"{kib.normalize():f} KiB/token" if kib == kib.to_integral_value() else f"{_g(kib)} KiB/token"


@dataclass(frozen=True)
class Preflight:
    """Pre-flight for one run: the GPU picture, the KV model, the running values; pure arithmetic."""

    gpu: GpuMemory | None
    current: Mapping[str, Decimal]
    kv: KvModel = KvModel()
    margin_gib: Decimal = Decimal(0)
    note: str = ""  # appended to every reason (production sharing the GPU)

    def _value(self, params: Mapping[str, Any], name: str) -> Decimal | None:
        raw = params.get(name, self.current.get(name))
        return to_decimal(raw) if raw is not None else None

    def requested(self, total: int, gmu: Decimal) -> int:
        """The bytes vLLM requests for ``gmu`` of a ``total``-byte card."""
        rounding = ROUND_CEILING if self.kv.request_ceiled else ROUND_FLOOR
        return int((Decimal(total) * gmu).to_integral_value(rounding=rounding))

    def budget(self, gmu: Decimal) -> tuple[int, str] | None:
        """KV cache bytes vLLM would have at ``gmu`` and how that was computed; None when unknown."""
        found = self._raw_budget(gmu)
        kv = self.kv
        if found is None or not (kv.null_block and kv.bytes_per_token):
            return found
        per_block = kv.bytes_per_token * kv.block_size
        return found[0] - per_block, f"{found[1]} − one null block of {_g(Decimal(per_block) / (1024 * 1024))} MiB"

    def _raw_budget(self, gmu: Decimal) -> tuple[int, str] | None:
        if self.gpu is None:
            return None
        total = _b(self.gpu.total_gib)
        requested = self.requested(total, gmu)
        kv = self.kv
        if kv.printed_kv_gib is not None and kv.printed_gmu is not None:
            printed_req = self.requested(total, kv.printed_gmu)
            # vLLM prints 2 decimals: the true size may be up to half a unit smaller, so that much is not counted
            how = (f"printed KV cache {_g(kv.printed_kv_gib)} GiB at gpu_memory_utilization {kv.printed_gmu.normalize()} "
                   f"less {PRINT_SLACK_GIB} GiB of print rounding")
            if gmu != kv.printed_gmu:
                how += f" {'+' if gmu > kv.printed_gmu else '−'} {_gb(abs(requested - printed_req))} GiB"
            return _b(kv.printed_kv_gib - PRINT_SLACK_GIB) + requested - printed_req, how
        if self.gpu.weights_gib is None or self.gpu.overhead_gib is None:
            return None
        graph = _b(kv.graph_gib) if kv.graph_gib is not None and kv.graph_in_budget else 0
        how = (f"{_gb(requested)} GiB − model weights {_g(self.gpu.weights_gib)} GiB − activation/overhead "
               f"{_g(self.gpu.overhead_gib)} GiB" + (f" − CUDA graphs {_gb(graph)} GiB" if graph else ""))
        return requested - _b(self.gpu.weights_gib) - _b(self.gpu.overhead_gib) - graph, how

    def capacity_tokens(self, gmu: Decimal) -> int | None:
        """Tokens the KV cache holds at ``gmu`` (whole blocks, as vLLM allocates); None when unknown."""
        found = self.budget(gmu)
        bpt = self.kv.bytes_per_token
        if found is None or not bpt:
            return None
        per_block = bpt * self.kv.block_size
        return max(found[0], 0) // per_block * self.kv.block_size

    def check(self, params: Mapping[str, Any]) -> PreflightResult:
        """Does the candidate fit next to the resident memory, leave a KV cache, and hold one max_model_len request?"""
        result = self._check(params)
        return PreflightResult(result.ok, result.reason + self.note) if self.note else result

    def _check(self, params: Mapping[str, Any]) -> PreflightResult:
        gmu = self._value(params, GMU)
        mml = self._value(params, MAX_MODEL_LEN)
        kv = self.kv
        if mml is not None and kv.model_max_len is not None and mml > kv.model_max_len:
            return PreflightResult(False, f"max_model_len {int(mml)} exceeds the model's own limit of {kv.model_max_len:,} tokens "
                                          "(max_position_embeddings)")
        gpu = self.gpu
        if gpu is None:
            return PreflightResult(True, "no GPU memory information (no NVML, nvidia-smi, message numbers or tuning.gpu_profile); "
                                         "the canary decides")
        if gmu is None:
            return PreflightResult(True, f"gpu_memory_utilization unknown; memory not checked ({gpu.source})")
        where = f"({gpu.source})"
        total = _b(gpu.total_gib)
        requested = self.requested(total, gmu)
        free = total - _b(gpu.resident_gib) - _b(self.margin_gib)
        margin = f" minus a margin of {_g(self.margin_gib)} GiB" if self.margin_gib else ""
        if requested > free:
            short_mib = (requested - free) // (1024 * 1024)
            return PreflightResult(False, (
                f"gpu_memory_utilization {gmu.normalize()} asks for {_gb(requested)} GiB of the {_g(gpu.total_gib)} GiB GPU, but "
                f"resident services hold {_g(gpu.resident_gib)} GiB and leave {_gb(free)} GiB{margin}: {short_mib} MiB short {where}"))
        if kv.graph_gib is not None and not kv.graph_in_budget and requested + _b(kv.graph_gib) > free:
            # vLLM < 0.20 captures CUDA graphs outside the gmu budget: they need free memory of their own
            return PreflightResult(False, (
                f"gpu_memory_utilization {gmu.normalize()} takes {_gb(requested)} of {_gb(free)} GiB free and leaves "
                f"{_gb(free - requested)} GiB, less than the {_g(kv.graph_gib)} GiB CUDA graphs need outside the budget {where}"))
        found = self.budget(gmu)
        if found is None:
            return PreflightResult(True, f"fits: {_gb(requested)} of {_gb(free)} GiB free {where}")
        budget, how = found
        if budget <= 0:
            if kv.printed_kv_gib is None and gpu.weights_gib is not None and gpu.overhead_gib is not None and not (
                    kv.graph_gib is not None and kv.graph_in_budget) and not kv.null_block:
                return PreflightResult(False, (
                    f"gpu_memory_utilization {gmu.normalize()} gives {_gb(requested)} GiB, but model weights {_g(gpu.weights_gib)} GiB "
                    f"+ activation/overhead {_g(gpu.overhead_gib)} GiB leave no KV cache ({_gb(budget)} GiB) {where}"))
            return PreflightResult(False, f"gpu_memory_utilization {gmu.normalize()} leaves no KV cache: {how} = {_gb(budget)} GiB {where}")
        fits = f"fits: {_gb(requested)} of {_gb(free)} GiB free, KV cache budget {_gb(budget)} GiB"
        bpt = kv.bytes_per_token
        if mml is None or not bpt:
            return PreflightResult(True, f"{fits} {where}")
        tokens = -(-int(mml) // kv.block_size) * kv.block_size
        needed = tokens * bpt
        capacity = self.capacity_tokens(gmu) or 0
        if needed > budget:
            approx = f" {kv.bytes_per_token_from}" if kv.bytes_per_token_from.startswith("≈") else ""
            return PreflightResult(False, (
                f"max_model_len {int(mml)} needs {_gb(needed)} GiB of KV cache ({tokens:,} tokens × {_per_token(bpt)}{approx}), "
                f"gpu_memory_utilization {gmu.normalize()} leaves {_gb(budget)} GiB ({how}): {int(mml) - capacity:,} token{'s' if int(mml) - capacity != 1 else ''} short "
                f"{where}"))
        return PreflightResult(True, f"{fits} ({capacity:,} tokens ≥ max_model_len {int(mml)}) {where}")


def check_candidate(params: Mapping[str, Any], current: Mapping[str, Decimal], gpu: GpuMemory | None,
                    margin_gib: Decimal = Decimal(0), kv: KvModel | None = None) -> PreflightResult:
    """Does the candidate's GPU budget fit next to the resident services and hold a KV cache (and one request)?"""
    return Preflight(gpu, current, kv or KvModel(), margin_gib).check(params)


def share_with_production(gpu: GpuMemory | None, current: Mapping[str, Decimal]) -> tuple[GpuMemory | None, str]:
    """The GPU picture when the canary runs beside production (``tuning.preflight.canary_shares_gpu``).

    A live source (NVML, nvidia-smi) already counts production's memory as used; otherwise production's
    running gmu × total is added to the resident memory. The note is appended to every reason.
    """
    if gpu is None:
        return None, ""
    if gpu.source in ("nvml", "nvidia-smi"):
        return gpu, (f"; production's memory is part of the {_g(gpu.resident_gib)} GiB {gpu.source} reports as used: "
                     "the canary must fit beside it")
    gmu = current.get(GMU)
    if gmu is None:
        return gpu, "; the canary shares production's GPU, but production's gpu_memory_utilization is unknown and not counted"
    held = Decimal(_b(gpu.total_gib * gmu)) / GIB_BYTES
    shared = GpuMemory(gpu.total_gib, gpu.resident_gib + held, gpu.weights_gib, gpu.overhead_gib, gpu.source)
    return shared, (f"; production holds {_g(held)} GiB on this GPU (gpu_memory_utilization {gmu.normalize()} × "
                    f"{_g(gpu.total_gib)} GiB); the canary must fit beside it")


def preflight_for(runner: RunnerSettings, values: Mapping[str, Any], current: Mapping[str, Decimal], *,
                  nvml: Callable[[], GpuMemory | None] = from_nvml,
                  smi: Callable[[], GpuMemory | None] = from_nvidia_smi) -> Preflight:
    """The run's pre-flight from the configured GPU source, the intent's message values and the running values."""
    gpu = gpu_memory(runner.gpu_source, values, runner.gpu_profile, nvml=nvml, smi=smi)
    note = ""
    if runner.canary_shares_gpu:
        gpu, note = share_with_production(gpu, current)
    return Preflight(gpu, current, kv_model(values, current, runner.gpu_profile), runner.preflight_margin_gib, note)
