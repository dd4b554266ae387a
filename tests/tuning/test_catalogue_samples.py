"""Tests generated from the catalogue: every entry's samples × every prefix kind × plain/wrapped/ANSI/CRLF.

Each sample of healing/tuning/vllm_catalogue/catalogue.yaml states the event it must give (class,
variant, line, escalate, seed fix, exact values); a new vLLM message is one entry plus its sample and
is tested here without writing a test.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from healing.tuning.actuators import GMU, MAX_MODEL_LEN, MAX_NUM_SEQS
from healing.tuning.catalogue import CATALOGUE_PATH, catalogue, default_gmu, load
from healing.tuning.observer import EVENT_CLASSES, Observer, observe_file, observe_lines
from healing.tuning.prefilter import build, scan

CURRENT = {GMU: 0.7, MAX_NUM_SEQS: 8, MAX_MODEL_LEN: 4096}

PREFIXES = {
    "none": "",
    "vllm-0.10": "ERROR 03-03 10:00:00 [core.py:718] ",
    "docker": "vllm-1  | ",
    "ray": "(EngineCore_DP0 pid=123) ",
    "ray+level": "(EngineCore_DP0 pid=123) ERROR 03-03 10:00:00 [core.py:1085] ",
    "rank": "[rank0]: ",
    "iso": "2026-03-03T10:00:00.123456789Z ",
    "journald": "Mar 03 10:00:00 host vllm[123]: (APIServer pid=123) ",
    "k8s": "[pod/vllm-7d9f6-x2k4q/vllm] ",
}
WIDTH = 80  # terminals hard-wrap the raw line, prefix included, also in the middle of a word


def _wrap(raw: str) -> list[str]:
    return [raw[i:i + WIDTH] for i in range(0, len(raw), WIDTH)] or [raw]


def _ansi(prefix: str, text: str) -> str:
    # vLLM's ColoredFormatter colours the process prefix and the level; pasted logs keep the codes
    coloured = re.sub(r"^(\([^)]*\))", "\x1b[0;36m\\1\x1b[0;0m", prefix)
    coloured = re.sub(r"\b(ERROR|INFO|WARNING)\b", "\x1b[31m\\1\x1b[0m", coloured)
    return coloured + text


def render(sample: dict[str, Any], prefix: str, form: str) -> tuple[list[str], range]:
    """The sample's log lines in one form and the numbers of the lines the decisive message spans."""
    context = list(sample.get("context") or [])
    body = sample["text"].split("\n")
    lines: list[str] = []
    decisive = int(sample.get("line", 1))
    span = range(len(context) + decisive, len(context) + decisive + 1)
    for _ in range(int(sample.get("repeat", 1))):
        for k, part in enumerate(body, 1):
            raw = prefix + part
            if form == "wrapped":
                pieces = _wrap(raw)
                if k == decisive:
                    first = len(context) + len(lines) + 1
                    span = range(first, first + len(pieces))
                lines += pieces
            elif form == "ansi":
                lines.append(_ansi(prefix, part))
            elif form == "crlf":
                lines.append(raw + "\r")
            else:
                lines.append(raw)
    if int(sample.get("repeat", 1)) > 1 and form != "wrapped":  # a soft signal: the event comes with the last repetition
        span = range(len(context) + len(lines), len(context) + len(lines) + 1)
    return context + lines, span


CASES = [(e.id, i, s) for e in catalogue().entries for i, s in enumerate(e.samples)]


@pytest.mark.parametrize("form", ["plain", "wrapped", "ansi", "crlf"])
@pytest.mark.parametrize("prefix", list(PREFIXES.values()), ids=list(PREFIXES))
@pytest.mark.parametrize("entry_id, index, sample", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sample_gives_its_event(entry_id: str, index: int, sample: dict[str, Any], prefix: str, form: str) -> None:
    entry = next(e for e in catalogue().entries if e.id == entry_id)
    lines, span = render(sample, prefix, form)
    current = dict(sample.get("current") or CURRENT)
    events = observe_lines(lines, current=current, gpu_total_gib=sample.get("gpu_total_gib"))
    assert len(events) == 1, [e.to_json() for e in events]
    e = events[0]
    assert e.event_class == sample.get("class", entry.event_class) and e.event_class in EVENT_CLASSES
    assert e.variant == sample["variant"]
    assert e.line in span, (e.line, span)
    assert e.escalate is sample["escalate"], e.reason
    assert e.seed_fix == sample["fix"], e.reason
    for key, value in sample["values"].items():
        assert e.values[key] == pytest.approx(value, abs=1e-12), key
    assert e.reason and "\n" not in e.reason


def test_every_entry_is_complete_and_its_keywords_are_in_its_samples() -> None:
    cat = catalogue()
    ids = [(e.id, e.variant) for e in cat.entries]
    assert len(ids) == len(set(ids))
    for e in cat.entries:
        assert e.samples and e.versions and e.keywords, e.id
        assert hasattr(Observer, f"_remedy_{e.remedy}"), e.id
        assert e.event_class in EVENT_CLASSES, e.id
        for s in e.samples:
            assert any(k in s["text"] for k in e.keywords), (e.id, s["text"][:60])
            assert e.regex.search(" ".join(s["text"].split("\n"))), e.id


def test_the_catalogue_covers_every_memory_failure_of_the_inventory() -> None:
    """Every failure / external row of INVENTORY.md (0.10.2, 0.20.0, 0.33.0) is an entry, or is explained here."""
    inventory = json.loads((CATALOGUE_PATH.parent / "inventory.json").read_text(encoding="utf-8"))
    same_entry = {"stats_line_v1": "stats_line", "stats_line_v0": "stats_line", "pooler_warmup_oom": "sampler_warmup_oom"}
    not_entries = {
        "worker_failed_wrapper": "the quoted inner message is matched inside the wrapper: one event of its class",
        "engine_core_init_failed": "never an event: the root cause is printed above it",
    }
    ids = {e.id for e in catalogue().entries}
    for row in inventory:
        if row["group"] not in ("failure", "external", "soft"):
            continue
        rid = same_entry.get(row["id"], row["id"])
        assert rid in ids or rid in not_entries, row["id"]
    for e in catalogue().entries:
        if e.versions != ("external",) or e.id in {r["id"] for r in inventory}:
            continue
        assert e.id == "seed_vllm_allocation_deficit"  # the only entry that is not in the inventory


def test_version_aware_default_gmu() -> None:
    assert default_gmu(None) == default_gmu("0.10.2") == default_gmu("0.17.1") == Decimal("0.9")
    assert default_gmu("0.20.0") == default_gmu("0.33.0") == default_gmu("0.29.1rc1.dev339+gda9888462") == Decimal("0.92")
    a = "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
    [e] = observe_lines(["INFO 03-03 10:00:00 [api_server.py:1] vLLM API server version 0.20.0", a])
    assert e.values["gpu_memory_utilization"] == 0.92 and e.escalate
    [e] = observe_lines(["INFO 03-03 10:00:00 [api_server.py:1] vLLM API server version 0.10.2", a])
    assert e.values["gpu_memory_utilization"] == 0.9 and e.escalate
    # a text that exists only since v0.21 proves the version when no banner was logged
    oom = ["Tried to allocate 136.00 MiB. GPU 0 has a total capacity of 22.36 GiB of", "which 120.88 MiB is free. ... If this "
           "problem persists, try setting", "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0"]
    [e] = observe_lines(oom)
    assert e.values["gpu_memory_utilization"] == 0.92 and e.seed_fix == {GMU: 0.9}


def test_two_runs_under_the_logo_banner_keep_their_own_arguments() -> None:
    def run(version: str, args: str) -> list[str]:
        p = "(APIServer pid=1) INFO 03-03 10:00:00 [startup.py:30] "
        return [p, p + "       █     █     █▄   ▄█", p + " ▄▄ ▄█ █     █     █ ▀▄▀ █  version " + version,
                p + "  █▄█▀ █     █     █     █  model   Qwen/Qwen3-8B", p + "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀",
                "(APIServer pid=1) INFO 03-03 10:00:00 [startup.py:96] non-default args: {" + args + "}",
                "(EngineCore_DP0 pid=2) ERROR 03-03 10:00:05 [core.py:1] ValueError: No available memory for the cache blocks."]
    events = observe_lines(run("0.33.0", "'model': 'x', 'gpu_memory_utilization': 0.7") + run("0.33.0", "'model': 'x'"))
    assert [(e.line, e.values["gpu_memory_utilization"], e.escalate) for e in events] == [(7, 0.7, False), (14, 0.92, True)]
    assert events[0].seed_fix == {GMU: 0.75}


def test_one_sustained_kv_pressure_episode_is_one_event() -> None:
    stat = ("(APIServer pid=1) INFO 05-19 10:{m:02d}:{s:02d} [loggers.py:271] Engine 000: Avg prompt throughput: 0.0 tokens/s, "
            "Avg generation throughput: 1.0 tokens/s, Running: 18 reqs, Waiting: 43 reqs, GPU KV cache usage: 97.0%, "
            "Prefix cache hit rate: 0.0%")
    lines = [stat.format(m=k // 6, s=10 * (k % 6)) for k in range(30)]  # five minutes of pressure
    assert len(observe_lines(lines, current={GMU: 0.7})) == 1
    # pressure that stops for longer than the window and comes back is a second episode
    later = [stat.format(m=40 + k // 6, s=10 * (k % 6)) for k in range(6)]
    assert len(observe_lines(lines + later, current={GMU: 0.7})) == 2


STEADY = ("(APIServer pid=1) INFO 05-19 10:00:00 [loggers.py:271] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg "
          "generation throughput: 1.0 tokens/s, Running: 4 reqs, Waiting: 0 reqs, GPU KV cache usage: 50.0%, Prefix cache hit rate: 0.0%")
BANNER = ["(APIServer pid=1) INFO 05-19 10:00:00 [api_server.py:1] vLLM API server version 0.10.2",
          "(APIServer pid=1) INFO 05-19 10:00:00 [utils.py:328] non-default args: {'model': 'Qwen/Qwen3-8B'}"]


def _anchored(text: str) -> bool:
    pf = build(Decimal(95), 32768)
    raw = text.encode()
    return any(a in raw for a in pf.anchors) or any(p.search(raw) for p in pf.patterns)


@pytest.mark.parametrize("entry_id, index, sample", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_the_prefiltered_file_gives_the_events_of_the_full_read(entry_id: str, index: int, sample: dict[str, Any],
                                                                tmp_path: Path) -> None:
    """Deep in a long log, after a restart banner — and, for runtime messages (an anchor), without one."""
    body, _span = render(sample, "(EngineCore_DP0 pid=2) ERROR 05-19 10:00:01 [core.py:1] ", "plain")
    layouts = [[STEADY] * 800 + BANNER + [STEADY] * 20 + body + [STEADY] * 700]
    if _anchored(body[-1]):
        layouts.append([STEADY] * 800 + body + [STEADY] * 700)
    for lines in layouts:
        log = tmp_path / "vllm.log"
        log.write_text("\n".join(lines) + "\n", encoding="utf-8")
        kwargs = {"current": dict(sample.get("current") or CURRENT), "gpu_total_gib": sample.get("gpu_total_gib")}
        full = [e.to_json() for e in observe_lines(lines, **kwargs)]
        assert [e.to_json() for e in observe_file(log, **kwargs)] == full
        assert len(full) == 1


def test_the_prefilter_skips_healthy_steady_state(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(BANNER + [STEADY] * 5000) + "\n", encoding="utf-8")
    with log.open("rb") as fh:
        read = [n for n, _ in scan(fh, build(Decimal(95), 32768))]
    assert read == list(range(1, 603))  # the start of the service only: 600 lines after the arguments


def test_load_rejects_an_entry_without_samples(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("entries:\n  - {id: x, kind: failure, class: y, keywords: [a], pattern: a, remedy: {function: f}, "
                   "versions: ['0.33.0'], samples: []}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least one sample"):
        load(bad)


def test_chunk_boundaries_and_overlong_lines_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks put every hit, context window and banner across chunk edges; the events stay the same."""
    import healing.tuning.prefilter as prefilter

    lines: list[str] = []
    for i, (_eid, _k, sample) in enumerate(CASES):
        if sample.get("current") or sample.get("gpu_total_gib") or sample.get("context"):
            continue
        lines += [STEADY] * (300 + 37 * i) + BANNER + ["x" * 70_000]
        lines += render(sample, "(EngineCore_DP0 pid=2) ERROR 05-19 10:00:01 [core.py:1] ", "plain")[0]
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(prefilter, "CHUNK_BYTES", 5000)
    full = [e.to_json() for e in observe_lines(lines, current=CURRENT)]
    assert [e.to_json() for e in observe_file(log, current=CURRENT)] == full
    assert len(full) >= 5
