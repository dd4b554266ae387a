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
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from healing.tuning.actuators import GMU, to_decimal
from healing.tuning.runner_config import GpuProfileSettings

MIB_PER_GIB = Decimal(1024)
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


def check_candidate(params: Mapping[str, Any], current: Mapping[str, Decimal], gpu: GpuMemory | None,
                    margin_gib: Decimal = Decimal(0)) -> PreflightResult:
    """Does the candidate's GPU budget fit next to the resident services and hold a KV cache?"""
    gmu_value = params.get(GMU, current.get(GMU))
    if gpu is None:
        return PreflightResult(True, "no GPU memory information (no NVML, nvidia-smi, message numbers or tuning.gpu_profile); "
                                     "the canary decides")
    if gmu_value is None:
        return PreflightResult(True, f"gpu_memory_utilization unknown; memory not checked ({gpu.source})")
    gmu = to_decimal(gmu_value)
    requested = gmu * gpu.total_gib
    free = gpu.free_gib - margin_gib
    where = f"({gpu.source})"
    margin = f" minus a margin of {_g(margin_gib)} GiB" if margin_gib else ""
    if requested > free:
        short_mib = ((requested - free) * MIB_PER_GIB).to_integral_value(rounding=ROUND_FLOOR)
        return PreflightResult(False, (
            f"gpu_memory_utilization {gmu.normalize()} asks for {_g(requested)} GiB of the {_g(gpu.total_gib)} GiB GPU, but "
            f"resident services hold {_g(gpu.resident_gib)} GiB and leave {_g(free)} GiB{margin}: {short_mib} MiB short {where}"))
    if gpu.weights_gib is not None and gpu.overhead_gib is not None:
        kv = requested - gpu.weights_gib - gpu.overhead_gib
        if kv <= 0:
            return PreflightResult(False, (
                f"gpu_memory_utilization {gmu.normalize()} gives {_g(requested)} GiB, but model weights {_g(gpu.weights_gib)} GiB "
                f"+ activation/overhead {_g(gpu.overhead_gib)} GiB leave no KV cache ({_g(kv)} GiB) {where}"))
        return PreflightResult(True, f"fits: {_g(requested)} of {_g(free)} GiB free, KV cache budget {_g(kv)} GiB {where}")
    return PreflightResult(True, f"fits: {_g(requested)} of {_g(free)} GiB free {where}")
