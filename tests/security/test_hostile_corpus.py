"""≥ 300 hostile files through validate, validate --json, info, info --json, check --json, decode --verify
and register, under a 1 GiB address-space limit: no traceback, no "internal error", no libpng line, no
run over 10 s, every exit code as the contract and the mutation's class say, JSON whenever asked for.

The commands run in-process (``healing.cli.main``) in one child process that has the limit set (a new
process per run would cost ~0.5 s each); a sample also runs through the real ``selfheal`` entry point.
Run with ``-s`` to see the summary (corpus size, failures per command, worst time and RSS).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.security.hostile_corpus import (
    ADDRESS_SPACE,
    COMMANDS,
    CORPUS_MAX_PIXELS,
    RUN_LIMIT_S,
    Case,
    build_corpus,
    cases_json,
    plan,
)

CHILD_TIMEOUT_S = 170


def _problems(case: Case, command: str, run: dict[str, Any]) -> list[str]:
    """Everything wrong with one run, as short phrases (empty when it kept the contract)."""
    found = []
    out, err = run["stdout"], run["stderr"]
    if run["code"] not in case.expected(command):
        found.append(f"exit {run['code']}, expected {'/'.join(map(str, case.expected(command)))}")
    for needle in ("Traceback", "internal error", "libpng"):
        if needle.lower() in (out + err).lower():
            found.append(f"{needle!r} in the output")
    if run["seconds"] > RUN_LIMIT_S:
        found.append(f"took {run['seconds']} s")
    if "--json" in command:
        try:
            json.loads(out)
        except ValueError:
            found.append("stdout is not JSON")
    if len([line for line in err.splitlines() if line.strip()]) > 1:
        found.append("more than one line on stderr")
    if "\x1b" in out + err or "\r" in out + err:
        found.append("a raw control character in the output")
    return found


def _run_child(cases: list[Case], work: Path, home: Path) -> list[dict[str, Any]]:
    out_dir = work / "out"
    out_dir.mkdir()
    spec = work / "runs.json"
    spec.write_text(json.dumps({"out_dir": str(out_dir), "cases": cases_json(cases), "runs": plan(cases, out_dir)}))
    results = work / "results.jsonl"
    env = subprocess_env(SELFHEAL_HOME=str(home), SELFHEAL_MAX_PIXELS=str(CORPUS_MAX_PIXELS))
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.security.hostile_corpus", str(spec), str(results)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        done = results.read_text().splitlines() if results.exists() else []
        pytest.fail(f"the corpus run did not finish in {CHILD_TIMEOUT_S} s; {len(done)} runs done")
    lines = results.read_text().splitlines() if results.exists() else []
    assert proc.returncode == 0 and proc.stdout == "", (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return [json.loads(line) for line in lines]


def test_hostile_corpus_keeps_the_contract(tmp_path: Path, _isolated_home: Path) -> None:
    started = time.perf_counter()
    cases = build_corpus(tmp_path / "corpus")
    assert len(cases) >= 300
    runs = _run_child(cases, tmp_path, _isolated_home)
    assert len(runs) == len(cases) * len(COMMANDS)

    failures: dict[str, list[str]] = {command: [] for command in COMMANDS}
    per_class: Counter[str] = Counter()
    for run in runs:
        case = cases[run["case"]]
        per_class[case.mutation] += 1
        for problem in _problems(case, run["command"], run):
            failures[run["command"]].append(f"{case.name} [{case.mutation}]: {problem}")
    slowest = max(runs, key=lambda r: r["seconds"])
    hungriest = max(runs, key=lambda r: r["rss_growth_kib"])
    summary = [
        f"hostile corpus: {len(cases)} files, {len(runs)} runs in {time.perf_counter() - started:.1f} s "
        f"(address space limited to {ADDRESS_SPACE >> 20} MiB, pixel limit {CORPUS_MAX_PIXELS})",
        "failures per command: " + ", ".join(f"{command}: {len(found)}" for command, found in failures.items()),
        f"worst time: {slowest['seconds']:.3f} s ({slowest['command']} on {cases[slowest['case']].name})",
        f"worst RSS: {max(r['maxrss_kib'] for r in runs) / 1024:.0f} MiB peak of the child; largest growth in one run "
        f"{hungriest['rss_growth_kib'] / 1024:.1f} MiB ({hungriest['command']} on {cases[hungriest['case']].name})",
        "runs per mutation class: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_class.items())),
    ]
    print("\n" + "\n".join(summary))
    listed = [f"{command}: {line}" for command, found in failures.items() for line in found]
    assert not listed, "\n".join(summary + listed[:60])


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_a_sample_through_the_selfheal_entry_point(tmp_path: Path, _isolated_home: Path) -> None:
    """Real processes, real start-up: 20 files spread over the corpus, each command in turn."""
    cases = build_corpus(tmp_path / "corpus")
    sample = cases[:: len(cases) // 20][:20]
    entry = Path(sys.executable).with_name("selfheal")
    env = subprocess_env(SELFHEAL_HOME=str(_isolated_home), SELFHEAL_MAX_PIXELS=str(CORPUS_MAX_PIXELS))
    found = []
    for i, case in enumerate(sample):
        command = COMMANDS[i % len(COMMANDS)]
        words = command.split()
        argv = ["decode", case.path, "--verify", "-o", str(tmp_path / f"d{i}.bin")] if words[0] == "decode" else \
            [words[0], case.path, *words[1:]]
        started = time.perf_counter()
        proc = subprocess.run([str(entry), *argv], env=env, capture_output=True, text=True, timeout=60,
                              preexec_fn=_limit_address_space, cwd=tmp_path)
        run = {"code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
               "seconds": time.perf_counter() - started}
        found += [f"{command} on {case.name}: {p}" for p in _problems(case, command, run)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("command", ["validate", "check"])
def test_libpng_never_speaks_from_a_thread(tmp_path: Path, command: str, capfd: pytest.CaptureFixture[str]) -> None:
    """The old guard silenced libpng only on the main thread; now damaged pixel data never reaches it."""
    from concurrent.futures import ThreadPoolExecutor

    from healing.analysis.health import VLMHealthChecker
    from healing.errors import SelfHealError
    from healing.pixelrts import read_image
    from tests.security.hostile_corpus import raw_png

    bad = tmp_path / "bad.png"
    bad.write_bytes(raw_png(8, 8, b"".join(b"\x07" + bytes(32) for _ in range(8))))

    def work() -> str:
        if command == "check":
            return VLMHealthChecker().check_health(bad).status.value
        try:
            read_image(bad)
        except SelfHealError as exc:
            return str(exc)
        return "read"

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: work(), range(4)))
    out, err = capfd.readouterr()
    assert "libpng" not in out + err
    assert set(answers) == ({"critical"} if command == "check" else
                            {"corrupted PNG: invalid scanline filter type 7 at byte 0 of the pixel data"})
    assert os.path.exists(bad)
