"""The worker's log sources drain a fast-growing log in one cycle, bounded by a time budget.

healing/tuning/sources.py reads ``READ_BYTES`` at a time and repeats until nothing new is left or
``DRAIN_SECONDS`` have passed; every read's events are recorded and the state is saved after each read.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import healing.tuning.sources as sources
from healing.tuning.actuators import parse_tuning_section
from healing.tuning.follower import LogFollower
from healing.tuning.runner_config import LogSource

OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has"  # 84 chars


def _line(i: int) -> str:
    """Line i (1-based) as exactly 99 characters: 100 bytes with its newline; an OOM at lines 25 and 75."""
    text = OOM if i in (25, 75) else f"steady line {i}"
    return text.ljust(99, ".")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    log = tmp_path / "vllm.log"
    log.write_bytes(b"".join(_line(i).encode() + b"\n" for i in range(1, 101)))  # 10,000 bytes
    monkeypatch.setattr(sources, "READ_BYTES", 1000)  # 10 lines per read
    reads: list[int] = []
    real = LogFollower.read_new_lines

    def counted(self: LogFollower) -> list[str]:
        lines = real(self)
        reads.append(len(lines))
        return lines
    monkeypatch.setattr(LogFollower, "read_new_lines", counted)
    recorded: list[tuple[str, list[tuple[int, str]]]] = []

    def record(settings: Any, event: Any, **kw: Any) -> dict[str, Any]:
        recorded.append((event.event_class, [(n, t[:12]) for n, t in event.evidence]))
        return {"action": "intent", "class": event.event_class}
    monkeypatch.setattr(sources, "record_event", record)
    home = tmp_path / "home"
    home.mkdir()
    return {"log": log, "reads": reads, "recorded": recorded, "settings": SimpleNamespace(home=home),
            "runner": SimpleNamespace(log_sources=[LogSource(log)], gpu_profile=None),
            "tuning": parse_tuning_section({}), "state": home / "tuning" / sources.STATE_FILE}


def _offset(world: dict[str, Any]) -> int:
    return json.loads(world["state"].read_text())[str(world["log"])]["offset"]


def test_one_cycle_drains_the_whole_backlog(world: dict[str, Any]) -> None:
    out = sources.observe_log_sources(world["settings"], world["runner"], world["tuning"],
                                      {"vllm.gpu_memory_utilization": 0.8})
    assert world["reads"] == [10] * 10 + [0]  # ten reads of 10 lines, then nothing new
    assert _offset(world) == 10_000
    # one event per OOM, each from its own read (line numbers count within the read's batch)
    assert world["recorded"] == [("cuda_oom_torch", [(5, "torch.OutOfM")])] * 2
    assert [(o["action"], o["class"], o["source"]) for o in out] == [("intent", "cuda_oom_torch", str(world["log"]))] * 2


def test_the_time_budget_stops_a_cycle_and_the_next_one_continues(world: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([100.0, 101.0, 102.0, 103.0, 104.0, 105.0,  # deadline 105: five reads in the first cycle
                  200.0, 201.0, 201.0, 201.0, 201.0, 201.0])  # deadline 205: the rest, then an empty read
    monkeypatch.setattr(sources, "_clock", lambda: next(ticks))
    monkeypatch.setattr(sources, "DRAIN_SECONDS", 5.0)
    args = (world["settings"], world["runner"], world["tuning"], {"vllm.gpu_memory_utilization": 0.8})
    first = sources.observe_log_sources(*args)
    assert world["reads"] == [10] * 5
    assert _offset(world) == 5_000  # lines 1-50 read, the OOM at line 25 recorded
    assert [o["class"] for o in first] == ["cuda_oom_torch"]
    second = sources.observe_log_sources(*args)
    assert world["reads"] == [10] * 10 + [0]
    assert _offset(world) == 10_000
    assert [o["class"] for o in second] == ["cuda_oom_torch"]
    assert world["recorded"] == [("cuda_oom_torch", [(5, "torch.OutOfM")])] * 2


def test_a_quiet_log_costs_one_read(world: dict[str, Any]) -> None:
    args = (world["settings"], world["runner"], world["tuning"], None)
    sources.observe_log_sources(*args)
    world["reads"].clear()
    assert sources.observe_log_sources(*args) == []
    assert world["reads"] == [0]
    assert _offset(world) == 10_000
