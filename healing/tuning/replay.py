"""Replay harness: run the vLLM Observer over labelled logs and score it (issue 11).

A case is ``X.log`` plus ``X.expected.json`` in one folder (format: tests/tuning/replay/README.md).
An event matches an expectation when the class is the same, ``escalate`` is the same and every fix
parameter the label lists lies in its inclusive ``[min, max]`` range (``fix: null`` = no fix may be
proposed, ``fix: {}`` = fix not scored). ``expected: []`` means no event at all. A case passes when
every expectation is met and no other event was emitted.

The Observer runs with the default tuning settings, not the configuration file: the labels were
computed against the default actuator bounds, so the score must not depend on a local config. A label
may state running values the log does not print (``current``: PARAM → value); they are passed to the
Observer as ``tune observe --current`` would.

Everything the harness reads is a regular file opened through ``healing.safeio``; a symlink, FIFO,
device or socket in the folder, a label that is not valid JSON or lacks a field, a ``.log`` without
its label (or the reverse) is an InputError (exit 3) naming the file.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.errors import EXIT_OK, EXIT_WARNING, InputError
from healing.safeio import kind_of, read_regular

LOG_SUFFIX = ".log"
LABEL_SUFFIX = ".expected.json"
MAX_LABEL_BYTES = 1 << 20  # labels are a few hundred bytes; a huge one is a mistake, not a label
PASS, FAIL = "pass", "fail"
# Short parameter names for the table only; the JSON keeps the dotted names of the labels.
_SHORT = {"vllm.gpu_memory_utilization": "gmu", "vllm.max_num_seqs": "max_num_seqs", "vllm.max_model_len": "max_model_len"}


@dataclass(frozen=True)
class Expectation:
    """One expected event. ``fix`` None: no fix may be proposed; empty: not scored."""

    event_class: str
    escalate: bool
    fix: dict[str, tuple[float, float]] | None
    note: str


@dataclass(frozen=True)
class Case:
    """One labelled log."""

    case_id: str
    log: Path
    source: str
    vllm_version: str
    vendor: str
    wrapper: str
    expected: tuple[Expectation, ...]
    current: dict[str, float] = field(default_factory=dict)  # running values the log does not print


@dataclass(frozen=True)
class CaseResult:
    """The verdict on one case; ``got`` holds the Observer's events as JSON objects."""

    case: Case
    got: tuple[dict[str, Any], ...]
    passed: bool
    why: str
    baseline: str | None = None  # PASS/FAIL in the baseline run, None without a baseline or a new case

    @property
    def regression(self) -> bool:
        """Failing now although the baseline passed it."""
        return self.baseline == PASS and not self.passed


@dataclass
class ClassScore:
    """Class-level counts over all cases (class match only, escalate and fix not considered)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def precision(self) -> float | None:
        return None if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    def recall(self) -> float | None:
        return None if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)


@dataclass
class ReplayReport:
    """All results of one replay run, in case order, with the totals derived from them."""

    directory: str
    results: list[CaseResult]
    baseline_path: str | None = None
    classes: dict[str, ClassScore] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def percent(self) -> float:
        return round(100 * self.passed / len(self.results), 1)

    @property
    def no_event_cases(self) -> list[CaseResult]:
        return [r for r in self.results if not r.case.expected]

    @property
    def false_events_on_healthy(self) -> int:
        return sum(len(r.got) for r in self.no_event_cases)

    @property
    def regressions(self) -> list[CaseResult]:
        return [r for r in self.results if r.regression]

    @property
    def exit_code(self) -> int:
        """1 when a case fails (default) or, with a baseline, when a case that passed there fails now."""
        if self.baseline_path is not None:
            return EXIT_WARNING if self.regressions else EXIT_OK
        return EXIT_OK if self.passed == len(self.results) else EXIT_WARNING


# --------------------------------------------------------------------------- reading

def _label_error(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}")


def _require(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, where: str = "") -> Any:
    if key not in doc:
        raise _label_error(path, f"missing field {where}{key!r}")
    value = doc[key]
    # bool is an int in Python: a number field must not accept true/false
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _label_error(path, f"field {where}{key!r} has the wrong type ({type(value).__name__})")
    return value


def _parse_fix(raw: Any, path: Path, where: str) -> dict[str, tuple[float, float]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _label_error(path, f"field {where}'fix' must be null or an object of PARAM: [min, max]")
    fix: dict[str, tuple[float, float]] = {}
    for param, bounds in raw.items():
        ok = (isinstance(bounds, list) and len(bounds) == 2
              and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds))
        if not ok or bounds[0] > bounds[1]:
            raise _label_error(path, f"field {where}'fix'[{param!r}] must be [min, max] with min <= max")
        fix[param] = (bounds[0], bounds[1])
    return fix


def _parse_current(raw: Any, path: Path) -> dict[str, float]:
    """The optional ``current`` object: actuator name → running value, names made canonical."""
    from healing.tuning.actuators import canonical_param

    if not isinstance(raw, dict):
        raise _label_error(path, "field 'current' must be an object of PARAM: value")
    current: dict[str, float] = {}
    for name, value in raw.items():
        try:
            param = canonical_param(name)
        except KeyError:
            raise _label_error(path, f"field 'current' names an unknown parameter {name!r}") from None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _label_error(path, f"field 'current'[{name!r}] must be a number")
        current[param] = value
    return current


def parse_label(data: bytes, path: Path, log: Path) -> Case:
    """A Case from the bytes of ``X.expected.json``; InputError naming the file when it is malformed."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _label_error(path, "not valid JSON (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise _label_error(path, f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(doc, dict):
        raise _label_error(path, "not a JSON object")
    expected = []
    for i, item in enumerate(_require(doc, "expected", list, path)):
        where = f"expected[{i}]."
        if not isinstance(item, dict):
            raise _label_error(path, f"{where[:-1]} is not an object")
        if "fix" not in item:
            raise _label_error(path, f"missing field {where}'fix'")
        expected.append(Expectation(
            event_class=_require(item, "class", str, path, where),
            escalate=_require(item, "escalate", bool, path, where),
            fix=_parse_fix(item["fix"], path, where),
            note=_require(item, "note", str, path, where),
        ))
    return Case(
        case_id=path.name[: -len(LABEL_SUFFIX)],
        log=log,
        source=_require(doc, "source", str, path),
        vllm_version=_require(doc, "vllm_version", str, path),
        vendor=_require(doc, "vendor", str, path),
        wrapper=_require(doc, "wrapper", str, path),
        expected=tuple(expected),
        current=_parse_current(doc["current"], path) if "current" in doc else {},
    )


def load_cases(directory: str | os.PathLike[str], patterns: Sequence[str] = ()) -> list[Case]:
    """Every labelled case in ``directory`` (sorted), or only those whose id matches one of ``patterns``.

    Other regular files (README.md) and subfolders are ignored; anything else in the folder is refused.
    """
    folder = Path(directory)
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise InputError(f"{folder}: no such directory") from None
    except OSError as exc:
        raise InputError(f"{folder}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{folder}: is {kind_of(st.st_mode)}, not a directory of labelled logs")
    logs: set[str] = set()
    labels: set[str] = set()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{folder}: cannot read ({exc.strerror or exc})") from None
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError as exc:  # removed or made unreadable while we list the folder
            raise InputError(f"{Path(entry.path)}: cannot read ({exc.strerror or exc})") from None
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):  # a symlink could point anywhere; a FIFO would block the read
            raise InputError(f"{Path(entry.path)}: is {kind_of(mode)}, not a regular file (refused)")
        if entry.name.endswith(LABEL_SUFFIX):
            labels.add(entry.name[: -len(LABEL_SUFFIX)])
        elif entry.name.endswith(LOG_SUFFIX):
            logs.add(entry.name[: -len(LOG_SUFFIX)])
    for case_id in sorted(logs ^ labels):
        missing = case_id + (LABEL_SUFFIX if case_id in logs else LOG_SUFFIX)
        raise InputError(f"{folder / missing}: missing (every case is X.log plus X.expected.json)")
    ids = sorted(logs)
    if patterns:
        ids = [i for i in ids if any(fnmatch.fnmatchcase(i, p) for p in patterns)]
    if not ids:
        what = f"no case matches {' or '.join(patterns)}" if patterns else "no labelled cases (X.log + X.expected.json)"
        raise InputError(f"{folder}: {what}")
    cases = []
    for case_id in ids:
        label = folder / (case_id + LABEL_SUFFIX)
        data = read_regular(label, follow_symlinks=False, max_bytes=MAX_LABEL_BYTES, what="a label file")
        cases.append(parse_label(data, label, folder / (case_id + LOG_SUFFIX)))
    return cases


def load_baseline(path: str | os.PathLike[str]) -> dict[str, str]:
    """case id → PASS/FAIL from a previous ``tune replay --json`` output."""
    p = Path(path)
    data = read_regular(p, max_bytes=64 << 20, what="a replay --json output")
    try:
        doc = json.loads(data.decode("utf-8"))
        rows = doc["cases"]
        verdicts = {row["case"]: row["verdict"] for row in rows}
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        raise InputError(f"{p}: not a `selfheal tune replay --json` output (needs cases[].case and .verdict)") from None
    if not all(isinstance(k, str) and v in (PASS, FAIL) for k, v in verdicts.items()):
        raise InputError(f"{p}: a baseline verdict is neither {PASS!r} nor {FAIL!r}")
    return verdicts


# --------------------------------------------------------------------------- judging

def _fix_problem(exp: Expectation, seed_fix: dict[str, Any] | None) -> str | None:
    """Why the proposed fix does not meet the label, or None when it does."""
    if exp.fix is None:
        return None if not seed_fix else f"proposed {_fix_text(seed_fix)}, expected no fix"
    for param, (low, high) in exp.fix.items():
        value = (seed_fix or {}).get(param)
        if value is None:
            return f"no {_short(param)} fix, expected {_range_text(low, high)}"
        if not low <= value <= high:
            return f"{_short(param)}={value} outside {_range_text(low, high)}"
    return None


def judge(case: Case, events: Iterable[dict[str, Any]]) -> tuple[bool, str, list[tuple[Expectation, dict[str, Any] | None]]]:
    """(passed, why, pairs): each expectation paired with the first unused event of its class."""
    got = list(events)
    unused = list(range(len(got)))
    problems: list[str] = []
    pairs: list[tuple[Expectation, dict[str, Any] | None]] = []
    for exp in case.expected:
        match = next((i for i in unused if got[i].get("class") == exp.event_class), None)
        if match is None:
            problems.append(f"missing {exp.event_class}")
            pairs.append((exp, None))
            continue
        unused.remove(match)
        event = got[match]
        pairs.append((exp, event))
        if bool(event.get("escalate")) != exp.escalate:
            problems.append(f"escalate={str(bool(event.get('escalate'))).lower()}, expected {str(exp.escalate).lower()}")
        if (problem := _fix_problem(exp, event.get("seed_fix"))) is not None:
            problems.append(problem)
    for i in unused:
        kind = "false event" if not case.expected else "unexpected"
        problems.append(f"{kind} {got[i].get('class')} at line {got[i].get('line')}")
    return not problems, "; ".join(problems), pairs


def run_replay(directory: str | os.PathLike[str], *, patterns: Sequence[str] = (),
               baseline: str | os.PathLike[str] | None = None) -> ReplayReport:
    """Load the cases, run the Observer over each log, judge every case and count per class."""
    from healing.tuning.observer import observe_file

    previous = load_baseline(baseline) if baseline is not None else None
    cases = load_cases(directory, patterns)
    report = ReplayReport(directory=str(directory), results=[], baseline_path=None if baseline is None else str(baseline))
    for case in cases:
        events = tuple(e.to_json() for e in observe_file(case.log, current=case.current))
        passed, why, pairs = judge(case, events)
        report.results.append(CaseResult(case, events, passed, why, None if previous is None else previous.get(case.case_id)))
        for exp, event in pairs:
            score = report.classes.setdefault(exp.event_class, ClassScore())
            if event is None:
                score.fn += 1
            else:
                score.tp += 1
        for event in events:  # events left unpaired are false positives of their class
            if not any(event is paired for _, paired in pairs):
                report.classes.setdefault(str(event.get("class")), ClassScore()).fp += 1
    return report


# --------------------------------------------------------------------------- output

def _short(param: str) -> str:
    return _SHORT.get(param, param.removeprefix("vllm."))


def _num(value: float) -> str:
    return f"{value:g}"


def _range_text(low: float, high: float) -> str:
    return _num(low) if low == high else f"{_num(low)}..{_num(high)}"


def _fix_text(fix: dict[str, Any]) -> str:
    return ",".join(f"{_short(k)}={_num(v)}" for k, v in fix.items())


def expectation_text(exp: Expectation) -> str:
    """``class/escalate``, ``class/gmu=0.6..0.85``, ``class/fix not scored``, ``class/no fix``."""
    if exp.fix is None:
        tail = "escalate" if exp.escalate else "no fix"
    elif not exp.fix:
        tail = ("escalate," if exp.escalate else "") + "fix not scored"
    else:
        tail = ("escalate," if exp.escalate else "") + ",".join(f"{_short(k)}={_range_text(*b)}" for k, b in exp.fix.items())
    return f"{exp.event_class}/{tail}"


def event_text(event: dict[str, Any]) -> str:
    """``class/escalate``, ``class/gmu=0.85`` or ``class/no fix`` for one Observer event."""
    parts = ["escalate"] if event.get("escalate") else []
    if event.get("seed_fix"):
        parts.append(_fix_text(event["seed_fix"]))
    return f"{event.get('class')}/{','.join(parts) or 'no fix'}"


def _joined(texts: Iterable[str]) -> str:
    return " + ".join(texts) or "none"


def _pct(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{part}/{whole} ({100 * part / whole:.1f} %)"


def table_lines(report: ReplayReport) -> list[str]:
    """The score table: a header, one row per case, then one line per total."""
    header = ["CASE", "VENDOR", "VERSION", "EXPECTED", "GOT", "VERDICT"]
    if report.baseline_path is not None:
        header.append("BASELINE")
    header.append("WHY")
    rows = [header]
    for r in report.results:
        row = [r.case.case_id, r.case.vendor, r.case.vllm_version,
               _joined(expectation_text(e) for e in r.case.expected), _joined(event_text(e) for e in r.got),
               PASS if r.passed else ("REGRESSION" if r.regression else "FAIL")]
        if report.baseline_path is not None:
            row.append(r.baseline or "new")
        row.append(r.why)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
             for row in rows]
    total = len(report.results)
    healthy = report.no_event_cases
    lines.append(f"cases passed: {report.passed}/{total} ({report.percent:.1f} %)")
    lines.append(f"false events on healthy logs: {report.false_events_on_healthy} "
                 f"(in {sum(bool(r.got) for r in healthy)} of {len(healthy)} cases expecting no event)")
    if report.baseline_path is not None:
        regressions = report.regressions
        fixed = sum(r.baseline == FAIL and r.passed for r in report.results)
        names = f": {', '.join(r.case.case_id for r in regressions)}" if regressions else ""
        lines.append(f"regressions against {report.baseline_path}: {len(regressions)}{names}; fixed since: {fixed}")
    for name in sorted(report.classes):
        s = report.classes[name]
        lines.append(f"class {name}: precision {_pct(s.tp, s.tp + s.fp)}, recall {_pct(s.tp, s.tp + s.fn)}")
    return lines


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def report_json(report: ReplayReport) -> dict[str, Any]:
    """The same content as the table, as one JSON-ready object (``cases`` is what ``--baseline`` reads)."""
    cases = []
    for r in report.results:
        cases.append({
            "case": r.case.case_id,
            "vendor": r.case.vendor,
            "version": r.case.vllm_version,
            "wrapper": r.case.wrapper,
            "source": r.case.source,
            "current": dict(r.case.current),
            "expected": [{"class": e.event_class, "escalate": e.escalate,
                          "fix": None if e.fix is None else {k: list(b) for k, b in e.fix.items()}} for e in r.case.expected],
            "got": [{"class": e.get("class"), "line": e.get("line"), "escalate": e.get("escalate"),
                     "seed_fix": e.get("seed_fix")} for e in r.got],
            "expected_text": _joined(expectation_text(e) for e in r.case.expected),
            "got_text": _joined(event_text(e) for e in r.got),
            "verdict": PASS if r.passed else FAIL,
            "why": r.why,
            "baseline": r.baseline,
            "regression": r.regression,
        })
    healthy = report.no_event_cases
    totals: dict[str, Any] = {
        "cases": len(report.results),
        "passed": report.passed,
        "failed": len(report.results) - report.passed,
        "percent": report.percent,
        "no_event_cases": len(healthy),
        "false_events_on_healthy": report.false_events_on_healthy,
        "healthy_cases_with_false_events": sum(bool(r.got) for r in healthy),
        "regressions": None if report.baseline_path is None else len(report.regressions),
        "classes": {name: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "precision": _ratio(s.precision()),
                           "recall": _ratio(s.recall())} for name, s in sorted(report.classes.items())},
    }
    return {"dir": report.directory, "mode": "baseline" if report.baseline_path else "all-must-pass",
            "baseline": report.baseline_path, "cases": cases, "totals": totals, "exit_code": report.exit_code}
