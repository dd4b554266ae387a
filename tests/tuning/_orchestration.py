"""Helpers for the orchestration tests: a migrated SQLite file, a config file, simulator logs.

Imported explicitly by the test modules (no conftest here: tests/tuning is shared with other authors).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from healing.config import Settings, load_settings
from healing.tuning.simulator import main as simulate
from storage.engine import dispose_engines
from storage.migrate import upgrade

# pinned to the 0.10 log format and arithmetic these tests were calibrated on (CUDA graphs outside the KV budget)
SIM_CANARY = ["{python}", "-m", "healing.tuning.simulator", "--model", "demo", "--startup-delay", "0", "--log-format", "0.10",
              "--gpu-memory-utilization", "{vllm.gpu_memory_utilization}", "--max-num-seqs", "{vllm.max_num_seqs}",
              "--max-model-len", "{vllm.max_model_len}", "--host", "{host}", "--port", "{port}"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database named by SELFHEAL_DATABASE_URL for everything under test: a SQLite file in
    tmp_path, then a fresh database on a real PostgreSQL server (skipped where none can be had)."""
    dispose_engines()
    if request.param == "postgresql":
        url = str(request.getfixturevalue("pg_url"))
    else:
        url = f"sqlite:///{tmp_path / 'db' / 'selfheal.db'}"
        upgrade(url)
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", url)
    yield url
    dispose_engines()


def canary_command(profile: str) -> list[str]:
    """The simulator template with a GPU profile (a built-in name or a profile file)."""
    return SIM_CANARY[:3] + ["--profile", profile] + SIM_CANARY[3:]


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tuning: dict[str, Any], mode: str = "prod",
              **top: Any) -> Settings:
    """Write a YAML config with this ``tuning`` section, point SELFHEAL_CONFIG at it, load it."""
    path = tmp_path / "selfheal.yaml"
    path.write_text(yaml.safe_dump({"tuning": {"mode": mode, **tuning}, **top}), encoding="utf-8")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(path))
    return load_settings()


def simulator_log(args: list[str]) -> str:
    """What the simulator prints (stdout and stderr together) for these flags; it must fail."""
    out = io.StringIO()
    fmt = [] if "--log-format" in args else ["--log-format", "0.10"]  # the format these tests were calibrated on
    assert simulate(args + ["--startup-delay", "0"] + fmt, out=out, err=out) == 1
    return out.getvalue()


def write_target(path: Path, **values: Any) -> Path:
    path.write_text(yaml.safe_dump({"served_model": "demo", "vllm": values}, sort_keys=False), encoding="utf-8")
    return path


def seed_profile(tmp_path: Path) -> Path:
    """The seed's 12 GiB card (5.928 GiB held by resident services) with a model whose KV cache comes
    1155 MiB short at gpu_memory_utilization 0.45 — the same 1155 MiB that 0.60 lacks in free memory."""
    path = tmp_path / "seed-card.json"
    path.write_text(json.dumps({"base": "seed", "weights_gib": 5.2279, "startup_delay_s": 0}), encoding="utf-8")
    return path


def tight_tuning(tmp_path: Path, log: Path, target: Path, **overrides: Any) -> dict[str, Any]:
    """A tuning section for the simulator's "tight" card (gmu 0.8 fails, 0.9 works)."""
    section: dict[str, Any] = {
        "log_sources": [str(log)],
        "target_config": str(target),
        "gpu_profile": "tight",
        "preflight": {"gpu_source": "profile"},
        "rate_limits": {"max_runs": 3, "cooldown_s": 0, "backoff_base_s": 0},
        "canary": {"command": canary_command("tight"), "start_timeout_s": 20, "stop_grace_s": 3,
                   "probe": {"requests": 4, "concurrency": 2, "max_tokens": 8, "timeout_s": 10}},
    }
    section.update(overrides)
    return section


TIGHT_FAILURE = ["--model", "demo", "--profile", "tight", "--gpu-memory-utilization", "0.8", "--max-num-seqs", "16",
                 "--max-model-len", "4096"]


def drain_intents() -> list[str]:
    """Call process_pending_intents until no open intent is left; the outcomes this caller produced.

    Runs in threads and in spawned processes (the configuration comes from the environment)."""
    from healing.tuning.runner import process_pending_intents

    outcomes: list[str] = []
    while True:
        summary = process_pending_intents(load_settings(), observe=False)
        if not summary["intents"]:
            return outcomes
        outcomes += [o["outcome"] for o in summary["intents"]]
