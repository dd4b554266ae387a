"""`selfheal tune replay`: the harness over a synthetic folder (exact rows, exit codes, bad input) and over
the shipped corpus in a real subprocess (the score equals the in-process one; no threshold here)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import healing.cli as cli
from healing.tuning.replay import report_json, run_replay
from tests.conftest import selfheal_cmd, subprocess_env

CORPUS = Path(__file__).resolve().parent / "replay"
SAMPLER = ("ERROR 05-06 10:00:00 [core.py:396] RuntimeError: CUDA out of memory occurred when warming up sampler with "
           "256 dummy requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` when initializing the engine.")
HEALTHY = ("INFO 05-06 10:00:10 [loggers.py:116] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg generation "
           "throughput: 12.3 tokens/s, Running: 1 reqs, Waiting: 0 reqs, GPU KV cache usage: 1.2%, Prefix cache hit rate: 0.0%")
NO_KV = ("ERROR 05-06 10:00:00 [core.py:396] ValueError: No available memory for the cache blocks. Try increasing "
         "`gpu_memory_utilization` when initializing the engine.")
SEQS = "vllm.max_num_seqs"
GMU = "vllm.gpu_memory_utilization"


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    if "healing.tuning.commands" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "healing.tuning.commands"])


def label(expected: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"source": "https://example.invalid/1", "vllm_version": "0.10.2", "vendor": "cuda", "wrapper": "none",
            "expected": expected, **extra}


def sampler(fix: dict[str, list[float]] | None, cls: str = "sampler_warmup_oom", escalate: bool = False) -> dict[str, Any]:
    return {"class": cls, "escalate": escalate, "fix": fix, "note": "synthetic"}


def add_case(folder: Path, case_id: str, log: str, doc: dict[str, Any] | str) -> None:
    (folder / f"{case_id}.log").write_text(log + "\n")
    (folder / f"{case_id}.expected.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    add_case(folder, "a_pass", SAMPLER, label([sampler({SEQS: [2, 16]})]))
    add_case(folder, "b_wrong_class", SAMPLER, label([sampler({"vllm.gpu_memory_utilization": [0.6, 0.9]}, "kv_cache_no_memory")]))
    add_case(folder, "c_false_event", SAMPLER, label([]))
    add_case(folder, "d_fix_out_of_range", SAMPLER, label([sampler({SEQS: [2, 8]})]))
    add_case(folder, "e_healthy", HEALTHY, label([]))
    add_case(folder, "f_escalate_expected", SAMPLER, label([sampler(None, escalate=True)]))
    (folder / "README.md").write_text("not a case\n")
    return folder


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli.main(["tune", "replay", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_rows_totals_and_exit_1(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = replay(capsys, str(corpus))
    assert rc == 1 and err == ""
    assert out.splitlines() == [
        "CASE                 VENDOR  VERSION  EXPECTED                               GOT                                 VERDICT  WHY",
        "a_pass               cuda    0.10.2   sampler_warmup_oom/max_num_seqs=2..16  sampler_warmup_oom/max_num_seqs=16  pass",
        "b_wrong_class        cuda    0.10.2   kv_cache_no_memory/gmu=0.6..0.9        sampler_warmup_oom/max_num_seqs=16  FAIL     "
        "missing kv_cache_no_memory; unexpected sampler_warmup_oom at line 1",
        "c_false_event        cuda    0.10.2   none                                   sampler_warmup_oom/max_num_seqs=16  FAIL     "
        "false event sampler_warmup_oom at line 1",
        "d_fix_out_of_range   cuda    0.10.2   sampler_warmup_oom/max_num_seqs=2..8   sampler_warmup_oom/max_num_seqs=16  FAIL     "
        "max_num_seqs=16 outside 2..8",
        "e_healthy            cuda    0.10.2   none                                   none                                pass",
        "f_escalate_expected  cuda    0.10.2   sampler_warmup_oom/escalate            sampler_warmup_oom/max_num_seqs=16  FAIL     "
        "escalate=false, expected true; proposed max_num_seqs=16, expected no fix",
        "cases passed: 2/6 (33.3 %)",
        "false events on healthy logs: 1 (in 1 of 2 cases expecting no event)",
        "class kv_cache_no_memory: precision -, recall 0/1 (0.0 %)",
        "class sampler_warmup_oom: precision 3/5 (60.0 %), recall 3/3 (100.0 %)",
    ]


def test_all_passing_subset_exits_0(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = replay(capsys, str(corpus), "--case", "a_*", "--case", "e_*")
    assert rc == 0
    assert out.splitlines() == [
        "CASE       VENDOR  VERSION  EXPECTED                               GOT                                 VERDICT  WHY",
        "a_pass     cuda    0.10.2   sampler_warmup_oom/max_num_seqs=2..16  sampler_warmup_oom/max_num_seqs=16  pass",
        "e_healthy  cuda    0.10.2   none                                   none                                pass",
        "cases passed: 2/2 (100.0 %)",
        "false events on healthy logs: 0 (in 0 of 1 cases expecting no event)",
        "class sampler_warmup_oom: precision 1/1 (100.0 %), recall 1/1 (100.0 %)",
    ]


def test_json_object(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = replay(capsys, str(corpus), "--json", "--case", "[ad]_*")
    assert rc == 1
    doc = json.loads(out)
    assert doc["mode"] == "all-must-pass" and doc["baseline"] is None and doc["exit_code"] == 1
    assert [(c["case"], c["verdict"], c["why"]) for c in doc["cases"]] == [
        ("a_pass", "pass", ""), ("d_fix_out_of_range", "fail", "max_num_seqs=16 outside 2..8")]
    assert doc["cases"][1]["expected"] == [{"class": "sampler_warmup_oom", "escalate": False, "fix": {SEQS: [2, 8]}}]
    assert doc["cases"][1]["got"] == [{"class": "sampler_warmup_oom", "line": 1, "escalate": False, "seed_fix": {SEQS: 16}}]
    assert doc["totals"] == {
        "cases": 2, "passed": 1, "failed": 1, "percent": 50.0, "no_event_cases": 0, "false_events_on_healthy": 0,
        "healthy_cases_with_false_events": 0, "regressions": None,
        "classes": {"sampler_warmup_oom": {"tp": 2, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0}},
    }


def test_baseline_fails_only_on_regressions(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = replay(capsys, str(corpus), "--json")
    base = json.loads(out)
    known = tmp_path / "known.json"
    known.write_text(out)
    rc, out, _ = replay(capsys, str(corpus), "--baseline", str(known), "--case", "[ac]_*")
    assert rc == 0  # c_false_event failed in the baseline too: known, not a regression
    lines = out.splitlines()
    assert lines[0].split() == ["CASE", "VENDOR", "VERSION", "EXPECTED", "GOT", "VERDICT", "BASELINE", "WHY"]
    assert lines[2].split()[5:7] == ["FAIL", "fail"]
    assert f"regressions against {known}: 0; fixed since: 0" in lines

    for case in base["cases"]:  # pretend every case passed before: now d_… etc. regress
        case["verdict"] = "pass"
    rosy = tmp_path / "rosy.json"
    rosy.write_text(json.dumps(base))
    rc, out, _ = replay(capsys, str(corpus), "--baseline", str(rosy), "--case", "[ad]_*")
    assert rc == 1
    assert out.splitlines()[2].split()[5:7] == ["REGRESSION", "pass"]
    assert f"regressions against {rosy}: 1: d_fix_out_of_range; fixed since: 0" in out.splitlines()


def test_label_current_reaches_the_observer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A label may state the running gmu the log does not print; without it the default 0.9 escalates."""
    want = [sampler({GMU: [0.75, 0.9]}, "kv_cache_no_memory")]
    add_case(tmp_path, "with_current", NO_KV, label(want, current={"gpu_memory_utilization": 0.7}))
    add_case(tmp_path, "without_current", NO_KV, label(want))
    rc, out, _ = replay(capsys, str(tmp_path), "--json")
    doc = json.loads(out)
    assert rc == 1
    assert [(c["case"], c["current"], c["got_text"], c["verdict"], c["why"]) for c in doc["cases"]] == [
        ("with_current", {GMU: 0.7}, "kv_cache_no_memory/gmu=0.75", "pass", ""),
        ("without_current", {}, "kv_cache_no_memory/escalate", "fail",
         "escalate=true, expected false; no gmu fix, expected 0.75..0.9"),
    ]


@pytest.mark.parametrize(("damage", "message"), [
    ("missing_label", "{dir}/a_pass.expected.json: missing (every case is X.log plus X.expected.json)"),
    ("invalid_json", "{dir}/a_pass.expected.json: not valid JSON (line 1 column 2: Expecting property name enclosed in double quotes)"),
    ("lacks_escalate", "{dir}/a_pass.expected.json: missing field expected[0].'escalate'"),
    ("lacks_vendor", "{dir}/a_pass.expected.json: missing field 'vendor'"),
    ("escalate_not_bool", "{dir}/a_pass.expected.json: field expected[0].'escalate' has the wrong type (str)"),
    ("current_unknown", "{dir}/a_pass.expected.json: field 'current' names an unknown parameter 'tensor_parallel_size'"),
    ("bad_range", "{dir}/a_pass.expected.json: field expected[0].'fix'['vllm.max_num_seqs'] must be [min, max] with min <= max"),
    ("fifo", "{dir}/x.log: is a FIFO, not a regular file (refused)"),
    ("symlink", "{dir}/link.log: is a symbolic link, not a regular file (refused)"),
])
def test_bad_input_exits_3(corpus: Path, capsys: pytest.CaptureFixture[str], damage: str, message: str) -> None:
    label_path = corpus / "a_pass.expected.json"
    if damage == "missing_label":
        label_path.unlink()
    elif damage == "invalid_json":
        label_path.write_text("{oops")
    elif damage == "lacks_escalate":
        label_path.write_text(json.dumps(label([{"class": "sampler_warmup_oom", "fix": None, "note": ""}])))
    elif damage == "lacks_vendor":
        doc = label([])
        del doc["vendor"]
        label_path.write_text(json.dumps(doc))
    elif damage == "escalate_not_bool":
        label_path.write_text(json.dumps(label([{**sampler(None), "escalate": "yes"}])))
    elif damage == "current_unknown":
        label_path.write_text(json.dumps(label([], current={"tensor_parallel_size": 2})))
    elif damage == "bad_range":
        label_path.write_text(json.dumps(label([sampler({SEQS: [16, 2]})])))
    elif damage == "fifo":
        os.mkfifo(corpus / "x.log")
    else:
        (corpus / "link.log").symlink_to(corpus / "a_pass.log")
    rc, out, err = replay(capsys, str(corpus), "--json")
    expected = message.format(dir=corpus)
    assert rc == 3
    assert err == f"selfheal: {expected}\n"
    assert json.loads(out) == {"error": expected, "exit_code": 3}


def test_baseline_that_is_not_a_replay_output_exits_3(corpus: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"case": "a_pass"}]))
    assert replay(capsys, str(corpus), "--baseline", str(bad)) == (
        3, "", f"selfheal: {bad}: not a `selfheal tune replay --json` output (needs cases[].case and .verdict)\n")
    bad.write_text(json.dumps({"cases": [{"case": "a_pass", "verdict": "ok"}]}))
    assert replay(capsys, str(corpus), "--baseline", str(bad)) == (
        3, "", f"selfheal: {bad}: a baseline verdict is neither 'pass' nor 'fail'\n")


def test_folder_itself_missing_or_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay(capsys, str(tmp_path / "none")) == (3, "", f"selfheal: {tmp_path / 'none'}: no such directory\n")
    (tmp_path / "file").write_text("x")
    assert replay(capsys, str(tmp_path / "file")) == (
        3, "", f"selfheal: {tmp_path / 'file'}: is a regular file, not a directory of labelled logs\n")
    (tmp_path / "empty").mkdir()
    assert replay(capsys, str(tmp_path / "empty")) == (
        3, "", f"selfheal: {tmp_path / 'empty'}: no labelled cases (X.log + X.expected.json)\n")


def test_subprocess_on_shipped_corpus_matches_in_process_score() -> None:
    res = subprocess.run([*selfheal_cmd(), "tune", "replay", str(CORPUS), "--json"], capture_output=True, text=True,
                         timeout=120, env=subprocess_env())
    doc = json.loads(res.stdout)
    expected = report_json(run_replay(CORPUS))
    assert res.returncode == doc["exit_code"] == expected["exit_code"] and res.returncode in (0, 1)
    assert set(doc) == {"dir", "mode", "baseline", "cases", "totals", "exit_code"}
    assert doc["totals"] == expected["totals"]
    assert doc["cases"] == expected["cases"]
    assert doc["totals"]["cases"] == len(list(CORPUS.glob("*.expected.json")))
    assert set(doc["cases"][0]) == {"case", "vendor", "version", "wrapper", "source", "current", "expected", "got", "expected_text",
                                    "got_text", "verdict", "why", "baseline", "regression"}
