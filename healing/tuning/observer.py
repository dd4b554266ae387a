"""The Observer: read vLLM logs, recognise quantifiable configuration failures, compute minimal fixes.

Input is the raw log of a vLLM server (0.4 → 0.33, with docker/Ray/rank/timestamp/journald/kubectl
prefixes, pasted ANSI codes, CRLF, terminal hard-wraps, tracebacks repeated per worker rank). Output is one
:class:`ObserverEvent` per *failure* — not per matching line — with the numbers read from the log,
whether to escalate, a sentence citing the numbers, and a seed fix in the safe direction.

The rules are data: vllm_catalogue/catalogue.yaml holds one entry per vLLM message (keywords,
pattern, class, the name of the remedy method ``_remedy_<name>`` that does the arithmetic, samples);
this module is the engine over it. Big files and big follower batches go through the prefilter
(healing/tuning/prefilter.py) first.

How one failure becomes one event:

* Every line is stripped of its prefixes (``vllm-1  | ``, ISO timestamps, ``(EngineCore_DP0 pid=…)``,
  ``[rank0]:``, ``ERROR 04-30 10:20:36 [core.py:396]`` …) before matching.
* A line of traceback *source* (``raise ValueError("No available memory …"``) is a weak match: it only
  becomes an event when no real message line of the same class follows within
  ``pending_horizon_lines``. The final ``ValueError: …`` line is the decisive one.
* Within one *run* (the log between two vLLM start banners — the API server's version line or the
  0.17+ logo row —, or new ``non-default args`` after a failure) each class is reported once: worker
  ranks, the re-raise in the API server and ``Worker failed with error '…'`` all describe the same
  failure. Each run keeps its own ``non-default args``.
* A hard-wrapped message is read joined with its unprefixed continuation lines, without blanks (a
  terminal cuts at its width, also inside words); the catalogue's patterns accept the lost blanks.
* A PyTorch OOM chained under "CUDA out of memory occurred when warming up sampler" is absorbed by the
  more specific sampler event (its numbers are kept).

Informational lines (KV cache size, available KV memory — negative included —, GPU blocks, the memory
profiling breakdown, stats lines) never produce events by themselves; they are context that makes
fixes exact (e.g. ``Available KV cache memory: -1.13 GiB`` right before "No available memory for
the cache blocks" gives the deficit) and are exposed as :attr:`Observer.telemetry`.

Soft signals (V0 preemption warnings, stats lines with a full KV cache and waiting requests) produce a
``kv_cache_preemption`` event only at a sustained rate: ``preemption_count`` signals within
``preemption_window_seconds`` (measured from the log timestamps; without timestamps the count alone
decides), and one event per sustained episode: no further one until the signals stop for a window.
A single preemption warning yields no event: an event without fix and without escalation would read
as "search for a fix", which one warning does not justify.

vLLM's default gpu_memory_utilization is version-aware (0.9 up to 0.17, 0.92 from 0.20: catalogue
``defaults``), read from the version banner or from a text that proves a minimum version.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

from healing.errors import InputError
from healing.tuning.actuators import (
    GMU,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    Actuator,
    TuningSettings,
    canonical_param,
    default_settings,
    to_decimal,
    vllm_defaults,
)
from healing.tuning.catalogue import Entry, catalogue, default_gmu, version_tuple

SUBSYSTEM = "vllm"
MAX_LINE_CHARS = 8192  # longer lines are cut: no vLLM message is longer, and garbage must stay cheap
PREFILTER_MIN_CHARS = 1 << 20  # observe_lines: batches from this size on go through the prefilter
LOOKAHEAD = 6  # lines joined after a line so that a hard-wrapped message (80 columns: up to ~500 chars) still matches
GIB = Decimal(1024**3)
PRINT_SLACK_GIB = Decimal("0.005")  # half of the 0.01 GiB resolution of vLLM's printed sizes

# Class names: exactly those of VLLM_MESSAGES.md §4.
STARTUP_FREE_MEMORY = "startup_free_memory_below_request"
KV_NO_MEMORY = "kv_cache_no_memory"
KV_MAX_LEN = "kv_cache_max_len_too_large"
KV_ONE_REQUEST = "kv_cache_one_request_does_not_fit"
SAMPLER_OOM = "sampler_warmup_oom"
TORCH_OOM = "cuda_oom_torch"
GRAPH_OOM = "cuda_error_oom_graph_capture"
PREEMPTION = "kv_cache_preemption"
PROFILING_ERROR = "memory_profiling_error"
# Issue 11's families, named in the same style (catalogue.yaml, INVENTORY.md §2/§4).
EXTERNAL_WEIGHTS = "external_weights_exceed_budget"
MAMBA_BLOCKS = "mamba_cache_blocks_below_max_num_seqs"
BATCHED_BELOW_LEN = "batched_tokens_below_max_model_len"
BATCHED_BELOW_SEQS = "batched_tokens_below_max_num_seqs"
AUTO_FIT = "auto_fit_max_model_len_failed"
WEIGHTS_OOM = "model_weights_oom"
CPU_STARTUP_FREE_MEMORY = "cpu_startup_free_memory_below_request"
CPU_KV_EXCEEDS = "cpu_kv_cache_exceeds_available"
CPU_KV_NO_MEMORY = "cpu_kv_cache_no_memory"
HIP_OOM = "hip_oom_torch"
XPU_OOM = "xpu_oom_torch"
NCCL_OOM = "nccl_oom"
EVENT_CLASSES = (STARTUP_FREE_MEMORY, KV_NO_MEMORY, KV_MAX_LEN, KV_ONE_REQUEST, SAMPLER_OOM, TORCH_OOM,
                 GRAPH_OOM, PREEMPTION, PROFILING_ERROR, EXTERNAL_WEIGHTS, MAMBA_BLOCKS, BATCHED_BELOW_LEN,
                 BATCHED_BELOW_SEQS, AUTO_FIT, WEIGHTS_OOM, CPU_STARTUP_FREE_MEMORY, CPU_KV_EXCEEDS, CPU_KV_NO_MEMORY,
                 HIP_OOM, XPU_OOM, NCCL_OOM)


# --------------------------------------------------------------------------- events

@dataclass(frozen=True)
class ObserverEvent:
    """One failure seen in a log. ``to_json()`` gives the DESIGN.md §4 object (plus extra keys)."""

    event_class: str
    line: int
    values: dict[str, int | float]
    escalate: bool
    reason: str
    seed_fix: dict[str, int | float] | None
    version: str | None = None
    subsystem: str = SUBSYSTEM
    variant: str = ""
    alternatives: tuple[dict[str, int | float], ...] = ()
    evidence: tuple[tuple[int, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: class, line, values, escalate, reason, seed_fix, version, subsystem, …"""
        return {
            "class": self.event_class,
            "line": self.line,
            "values": dict(self.values),
            "escalate": self.escalate,
            "reason": self.reason,
            "seed_fix": dict(self.seed_fix) if self.seed_fix is not None else None,
            "version": self.version,
            "subsystem": self.subsystem,
            "variant": self.variant,
            "alternatives": [dict(a) for a in self.alternatives],
            "evidence": [{"line": n, "text": t} for n, t in self.evidence],
        }


# --------------------------------------------------------------------------- prefixes

# colour codes as sent (ESC), as pasted without the ESC ("[0;36m") and as syslog/CloudWatch escape it ("#033[1;36m")
_ANSI = re.compile(r"(?:\x1b|#033)\[[0-9;?]*[A-Za-z]|\[(?:\d{1,3};)*\d{1,3}m")
_P_DOCKER = re.compile(r"^[A-Za-z0-9][\w.-]*[-_]\d+\s+\|\s?")
_P_ISO = re.compile(r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?\s+")
_P_PROC = re.compile(r"^\((?P<name>[A-Za-z_][\w.-]*)(?P<attrs>(?:[ ,]+\w+=[^,)\s]*)+)\)\s?")
_P_RANK = re.compile(r"^\[rank(\d+)\]:\s?")
_P_LEVEL = re.compile(
    r"^(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+(?P<md>\d{2}-\d{2})\s+(?P<hms>\d{2}:\d{2}:\d{2})(?:[.,]\d+)?\s+"
    r"(?:\[[^\]\s]+:\d+\]|[\w./-]+:\d+\])\s?"
)
_P_UVICORN = re.compile(r"^(?:INFO|WARNING|ERROR|DEBUG):\s+")
# journald / syslog: "Mar 03 10:00:00 host vllm[123]: " (any language's month abbreviation)
_P_JOURNALD = re.compile(r"^[^\W\d]{3,5}\.? {1,2}\d{1,2} \d{2}:\d{2}:\d{2} \S+ [^\s:\[]+(?:\[\d+\])?: ")
# kubectl logs --prefix: "[pod/vllm-7d9f6-x2k4q/vllm] "
_P_K8S = re.compile(r"^\[pod/[^\]\s]+\] ")
_PID = re.compile(r"\bpid=(\d+)")


@dataclass(frozen=True)
class LogLine:
    """A log line with its prefixes removed; ``timestamp`` in seconds when a prefix carried one."""

    number: int
    text: str
    timestamp: float | None
    pid: int | None
    prefixed: bool


def strip_prefixes(raw: str) -> tuple[str, float | None, int | None, bool]:
    """Remove every known prefix (any order, combined); return (message, timestamp, pid, had_prefix)."""
    text = _ANSI.sub("", raw)
    ts_vllm: float | None = None
    ts_iso: float | None = None
    pid: int | None = None
    had = False
    for _ in range(12):  # bounded: a hostile line cannot loop us
        m = _P_LEVEL.match(text)
        if m:
            ts_vllm = _vllm_time(m.group("md"), m.group("hms"))
        else:
            m = _P_PROC.match(text)
            if m:
                pm = _PID.search(m.group("attrs"))
                pid = int(pm.group(1)) if pm else pid
            else:
                m = (_P_RANK.match(text) or _P_DOCKER.match(text) or _P_UVICORN.match(text) or _P_K8S.match(text)
                     or _P_JOURNALD.match(text))
                if not m:
                    m = _P_ISO.match(text)
                    if m:
                        ts_iso = _iso_time(m.group(1))
        if not m:
            break
        had = True
        text = text[m.end():]
    return text, (ts_vllm if ts_vllm is not None else ts_iso), pid, had


_DAYS_BEFORE = (0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335)  # a leap year: 02-29 is valid


def _vllm_time(md: str, hms: str) -> float | None:
    # vLLM prints no year; only differences between lines are used, so seconds since 1 January suffice.
    # Plain arithmetic: strptime on every line of a big log would dominate the parse time.
    month, day = int(md[:2]), int(md[3:])
    hour, minute, second = int(hms[:2]), int(hms[3:5]), int(hms[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        return None
    return float(((_DAYS_BEFORE[month - 1] + day - 1) * 24 + hour) * 3600 + minute * 60 + second)


def _iso_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace(" ", "T")).timestamp()
    except ValueError:
        return None


# --------------------------------------------------------------------------- reading

def clean_line(raw: str) -> str:
    """Bound the length and keep what a terminal would show after carriage returns (progress bars)."""
    raw = raw[: MAX_LINE_CHARS * 2].rstrip("\r\n")
    if "\r" in raw:
        parts = [p for p in raw.split("\r") if p.strip()]
        raw = parts[-1] if parts else ""
    return raw[:MAX_LINE_CHARS]


def iter_binary_lines(stream: BinaryIO, max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """Lines of a binary stream, decoded with replacement; overlong lines are cut, never buffered whole."""
    limit = max_chars * 4 + 1
    while True:
        chunk = stream.readline(limit)
        if not chunk:
            return
        if not chunk.endswith(b"\n"):
            while True:  # skip the rest of an overlong line without holding it
                rest = stream.readline(limit)
                if not rest or rest.endswith(b"\n"):
                    break
        yield chunk.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- message patterns

_NUM = r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_INT_SEP = r"\d[\d,]*"

# Failure patterns live in the catalogue (vllm_catalogue/catalogue.yaml); the torch OOM's tail is parsed here.
_UNIT = r"(?:[KMGT]iB|bytes?|B)"
_RE_TORCH_THIS = re.compile(r"this process has (?P<p>" + _NUM + r") ?(?P<u>" + _UNIT + r") memory in use")
_RE_TORCH_PROC = re.compile(r"Process (?P<pid>\d+) has (?P<p>" + _NUM + r") ?(?P<u>" + _UNIT + r") memory in use")
_RE_TORCH_OLD_FREE = re.compile(r"(?P<f>" + _NUM + r") ?(?P<u>" + _UNIT + r") free")

# Informational (§2) and context lines.
# V0 prints the platform's device name: "# cuda blocks: N" (0.10.2 executor_base.py:114), older "# GPU blocks: N"
_RE_BLOCKS = re.compile(r"# (?P<dev>\w+) blocks: (?P<gpu>\d+), # CPU blocks: (?P<cpu>\d+)")
_RE_CONCURRENCY = re.compile(r"Maximum concurrency for (?P<len>" + _INT_SEP + r") tokens per request: (?P<x>" + _NUM + r")x")
_RE_KV_SIZE = re.compile(r"(?P<pool>\w+) KV cache size: (?P<tokens>" + _INT_SEP + r") tokens")
_RE_AVAILABLE = re.compile(r"Available KV cache memory: (?P<gib>" + _NUM + r") GiB")
_RE_PROFILE_TOTAL = re.compile(
    r"total_gpu_memory \((?P<total>" + _NUM + r") ?GiB\) x gpu_memory_utilization \((?P<gmu>" + _NUM + r")\) = "
    r"(?P<budget>" + _NUM + r") ?GiB")
_RE_PROFILE_PARTS = re.compile(
    r"model weights take (?P<w>" + _NUM + r") ?GiB; non_torch_memory takes (?P<n>" + _NUM + r") ?GiB; PyTorch "
    r"activation peak memory takes (?P<a>" + _NUM + r") ?GiB; the rest of the memory reserved for KV Cache is "
    r"(?P<k>" + _NUM + r") ?GiB")
_RE_MODEL_LOADING = re.compile(r"Model loading took (?P<gib>" + _NUM + r") GiB")
_RE_GRAPH_DONE = re.compile(r"Graph capturing finished in (?P<s>" + _NUM + r") secs?, took (?P<gib>" + _NUM + r") GiB")
_RE_GRAPH_START = re.compile(r"CUDA graphs can take additional|Capturing cudagraphs? for|Capturing CUDA graph", re.I)
_RE_THROUGHPUT = re.compile(
    r"Avg prompt throughput: (?P<p>" + _NUM + r") tokens/s, Avg generation throughput: (?P<g>" + _NUM + r") tokens/s")
_RE_NON_DEFAULT = re.compile(r"non-default args: \{(?P<body>.*)\}")
_RE_ARG = re.compile(r"'(?P<k>gpu_memory_utilization|max_num_seqs|max_model_len)': ?(?P<v>" + _NUM + r")")
_RE_CONFIG_LEN = re.compile(r"(?:with config: .*?\bmax_seq_len=(?P<a>\d+)|Using max model len (?P<b>\d+))")
_RE_VERSION = re.compile(
    r"vLLM API server version (?P<a>v?\d+\.\d+[\w.+-]*)|LLM engine \(v(?P<b>\d+\.\d+[\w.+-]*)\)"
    r"|\bvLLM(?: version)? v?(?P<c>\d+\.\d+\.\d+[\w.+-]*)|\bversion (?P<d>\d+\.\d+\.\d+[\w.+-]*)")
# A run starts at the API server's version line, 0.17+'s logo row carrying "version X", or the plain
# banner; the engine's "Initializing … LLM engine" starts one only after a failure (offline LLM() restarts).
_RE_START = re.compile(r"vLLM API server version|vLLM server version|Starting vLLM API server|[█▄▀][█▄▀ ]*\s+version\s+v?\d")
_RE_ENGINE_INIT = re.compile(r"Initializing an? (?:V\d )?LLM engine")
_RE_TRACEBACK = re.compile(r"^Traceback \(most recent call last\)")
_RE_FRAME = re.compile(r'^\s*File "(?P<file>[^"]*)", line \d+, in (?P<func>\S+)')
_RE_SOURCE = re.compile(r"^\s*(?:raise\b|assert\b|f?[\"']|\w+\s*=\s*f?[\"'])")
_GRAPH_WORDS = ("capture_model", "cudagraph", "cuda_graph", "graph_capture", "CUDAGraph", "torch.cuda.graph", "_capture")

def _gib(value: str, unit: str | None) -> Decimal:
    v = Decimal(value)
    unit = (unit or "GiB").strip()
    factor = {"KiB": Decimal(1024), "MiB": Decimal(1024**2), "GiB": GIB, "TiB": Decimal(1024**4)}.get(unit, Decimal(1))
    return v * factor / GIB


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _num(d: Decimal | int) -> int | float:
    """JSON value of a number read or computed: ints stay ints, decimals print as written (0.8, not 0.80)."""
    if isinstance(d, int):
        return d
    if d == d.to_integral_value() and abs(d) < 10**15 and d.as_tuple().exponent >= 0:
        return int(d)
    return float(d)


def _fmt(d: Decimal | int | float, places: int | None = None) -> str:
    v = to_decimal(d) if not isinstance(d, Decimal) else d
    if places is not None:
        v = v.quantize(Decimal(1).scaleb(-places))
    text = format(v.normalize(), "f") if places is None else format(v, "f")
    return text


# --------------------------------------------------------------------------- run state

@dataclass
class _Candidate:
    event_class: str
    variant: str
    line: int
    strong: bool
    build: Callable[[], ObserverEvent] | None = None
    absorbs: tuple[str, ...] = ()
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Episode:
    """Soft signals of one kind: the recent ones (for the rate) and whether an event already covers them."""

    signals: deque[tuple[float | None, int]] = field(default_factory=deque)
    reported: bool = False
    last: tuple[float | None, int] | None = None


@dataclass
class _Run:
    emitted: set[str] = field(default_factory=set)
    pending: list[_Candidate] = field(default_factory=list)
    ctx: dict[str, Decimal] = field(default_factory=dict)
    ctx_lines: dict[str, tuple[int, str]] = field(default_factory=dict)
    log_config: dict[str, Decimal] = field(default_factory=dict)
    graph_capture: bool = False
    episodes: dict[str, _Episode] = field(default_factory=dict)
    active: bool = False


class Observer:
    """Streaming log observer over the message catalogue. ``feed(lines)`` returns the events decided so
    far, ``finish()`` the rest.

    ``current`` holds the running values (dotted or short names, e.g. from ``--current``); numbers the
    failing message prints itself win over it, log context (``non-default args``) and vLLM's defaults
    (version-aware, catalogue ``defaults``) fill the gaps. ``gpu_total_gib`` is used when the log never
    prints the card's size.
    """

    def __init__(self, settings: TuningSettings | None = None, *, current: Mapping[str, float | int | str | Decimal] | None = None,
                 gpu_total_gib: float | Decimal | None = None) -> None:
        self.settings = settings or default_settings()
        self.obs = self.settings.observer
        self.current: dict[str, Decimal] = {}
        for name, value in (current or {}).items():
            self.current[canonical_param(name)] = to_decimal(value)
        self.gpu_total_gib = to_decimal(gpu_total_gib) if gpu_total_gib is not None else None
        self.version: str | None = None
        self.min_version: str | None = None  # proved by a version hint when no banner was logged
        self.telemetry: dict[str, int | float] = {}
        self.catalogue = catalogue()
        self._entries = list(self.catalogue.entries)
        # every keyword once, blanks removed: one cheap test rejects the lines no entry can match
        self._squeezed_keywords = tuple({k.replace(" ", "") for e in self._entries for k in e.keywords})
        self._keywords = tuple({k for e in self._entries for k in e.keywords})
        self._run = _Run()
        self._buffer: deque[LogLine] = deque()
        self._line_no = 0
        self._frames: list[str] = []
        self._prev_frame = False
        self._prev_text = ""  # the previous non-empty line
        self._prev_joined = ""  # the previous message with its hard-wrapped continuation lines
        self._cont_until = 0  # the last line number that continues the current message
        self._out: list[ObserverEvent] = []

    # ----------------------------------------------------------------- streaming API
    def feed(self, lines: Iterable[str]) -> list[ObserverEvent]:
        for raw in lines:
            self._line_no += 1
            self._push(self._line_no, raw)
        return self._drain()

    def feed_numbered(self, lines: Iterable[tuple[int, str]]) -> list[ObserverEvent]:
        """Lines with their 1-based numbers in the file; a jump in the numbers is a gap (prefiltered lines)."""
        for number, raw in lines:
            if number != self._line_no + 1:
                self._gap()
            self._line_no = number
            self._push(number, raw)
        return self._drain()

    def finish(self) -> list[ObserverEvent]:
        while self._buffer:
            self._process(self._buffer.popleft())
        self._flush_pending(force=True)
        return self._drain()

    def _push(self, number: int, raw: str) -> None:
        text, ts, pid, had = strip_prefixes(clean_line(raw))
        self._buffer.append(LogLine(number, text, ts, pid, had))
        while len(self._buffer) > LOOKAHEAD:
            self._process(self._buffer.popleft())

    def _gap(self) -> None:
        # skipped lines separate what surrounds them: no message continues across a gap
        while self._buffer:
            self._process(self._buffer.popleft())
        self._prev_text = self._prev_joined = ""
        self._prev_frame = False

    def _drain(self) -> list[ObserverEvent]:
        out, self._out = self._out, []
        return out

    # ----------------------------------------------------------------- per line
    def _continuations(self) -> list[LogLine]:
        out: list[LogLine] = []
        for nxt in list(self._buffer)[:LOOKAHEAD]:
            # only unprefixed, non-structural lines continue a message (hard-wrapped output)
            if nxt.prefixed or not nxt.text.strip() or _RE_FRAME.match(nxt.text) or _RE_TRACEBACK.match(nxt.text):
                break
            out.append(nxt)
        return out

    def _joined(self, line: LogLine) -> str | None:
        """The line with its hard-wrapped continuation lines, joined without blanks (a terminal cuts at its
        width, also inside words and numbers; the catalogue's loose patterns accept the lost blanks)."""
        cont = self._continuations()
        if not cont:
            return None
        return line.text.rstrip() + "".join(c.text.strip() for c in cont)

    def _process(self, line: LogLine) -> None:
        text = line.text
        self._flush_pending(force=False)
        is_frame = bool(_RE_FRAME.match(text))
        source = (self._prev_frame and not is_frame) or bool(_RE_SOURCE.match(text))
        self._prev_frame = is_frame
        if _RE_TRACEBACK.match(text):
            self._frames = []
        elif is_frame:
            self._frames.append(text)
            self._frames = self._frames[-64:]
        elif source and self._frames:
            self._frames.append(text)

        if "ersion" in text or "LLM engine" in text or "engine (v" in text:
            if _RE_START.search(text) or (self._run.active and _RE_ENGINE_INIT.search(text)):
                self._new_run()
            vm = _RE_VERSION.search(text)
            if vm and ("vllm" in text.lower() or "engine (v" in text or "version" in text):
                self.version = next(g for g in vm.groups() if g).lstrip("v")
        for hint, minimum in self.catalogue.version_hints:
            if hint in text and (self.min_version is None or version_tuple(minimum) > version_tuple(self.min_version)):
                self.min_version = minimum

        self._context(line)
        joined = self._match_catalogue(line, strong=not source)
        if text.strip():
            self._prev_text = text
            if line.number > self._cont_until:
                self._prev_joined = joined if joined is not None else text
                self._cont_until = line.number + len(self._continuations())

    def _new_run(self) -> None:
        self._flush_pending(force=True)
        self._run = _Run()

    def _remember(self, key: str, value: Decimal, line: LogLine) -> None:
        self._run.ctx[key] = value
        self._run.ctx_lines[key] = (line.number, line.text.strip()[:500])

    def _context(self, line: LogLine) -> None:
        text = line.text
        run = self._run
        tel = self.telemetry
        # cheap substring guards first: most lines of a big log match none of these
        if "KV cache" in text:
            if m := _RE_AVAILABLE.search(text):
                self._remember("available_kv_gib", Decimal(m["gib"]), line)
                tel["available_kv_cache_gib"] = _num(Decimal(m["gib"]))
            if m := _RE_KV_SIZE.search(text):
                tel["kv_cache_tokens"] = _int(m["tokens"])
                self._remember("kv_tokens", Decimal(_int(m["tokens"])), line)
            if "Avg prompt" in text and (tm := _RE_THROUGHPUT.search(text)):
                tel.update(prompt_throughput=_num(Decimal(tm["p"])), generation_throughput=_num(Decimal(tm["g"])))
        if "Maximum concurrency" in text and (m := _RE_CONCURRENCY.search(text)):
            tel["max_concurrency"] = _num(Decimal(m["x"]))
            tel["max_concurrency_len"] = _int(m["len"])
        if " blocks: " in text and (m := _RE_BLOCKS.search(text)):
            tel["gpu_blocks"] = int(m["gpu"])
            tel["cpu_blocks"] = int(m["cpu"])
            self._remember("gpu_blocks", Decimal(m["gpu"]), line)
            if int(m["gpu"]) == 0:
                run.active = True
                run.pending.append(_Candidate(KV_NO_MEMORY, "gpu_blocks_0", line.number, strong=False,
                                              build=self._builder_a(line, "gpu_blocks_0")))
        if "total_gpu_memory" in text and (m := _RE_PROFILE_TOTAL.search(text)):
            self._remember("total_gib", Decimal(m["total"]), line)
            self._remember("profile_gmu", Decimal(m["gmu"]), line)
            run.log_config.setdefault(GMU, Decimal(m["gmu"]))
            tel["total_gpu_memory_gib"] = _num(Decimal(m["total"]))
        if "model weights take" in text and (m := _RE_PROFILE_PARTS.search(text)):
            self._remember("kv_reserved_gib", Decimal(m["k"]), line)
            tel.update(weights_gib=_num(Decimal(m["w"])), non_torch_gib=_num(Decimal(m["n"])),
                       activation_peak_gib=_num(Decimal(m["a"])), kv_reserved_gib=_num(Decimal(m["k"])))
        if "Model loading took" in text and (m := _RE_MODEL_LOADING.search(text)):
            tel["model_loading_gib"] = _num(Decimal(m["gib"]))
        if "raph" in text:  # CUDA graph / cudagraph / Graph capturing
            if _RE_GRAPH_START.search(text):
                run.graph_capture = True
            if m := _RE_GRAPH_DONE.search(text):
                run.graph_capture = False
                tel["graph_capture_gib"] = _num(Decimal(m["gib"]))
        if "non-default args" in text:
            # the dict may be hard-wrapped mid-key by a terminal ('max_mod' / 'l_len': 1024): read it joined
            joined = self._joined(line)
            if m := _RE_NON_DEFAULT.search(joined if joined is not None else text):
                if run.active:  # new arguments after a failure: the next start of the service
                    self._new_run()
                    run = self._run
                for am in _RE_ARG.finditer(m["body"]):
                    run.log_config[canonical_param(am["k"])] = Decimal(am["v"])
        if ("max_seq_len=" in text or "Using max model len" in text) and (m := _RE_CONFIG_LEN.search(text)):
            run.log_config.setdefault(MAX_MODEL_LEN, Decimal(m["a"] or m["b"]))

    # ----------------------------------------------------------------- the catalogue engine
    def _match_catalogue(self, line: LogLine, strong: bool) -> str | None:
        """Match the line against every entry; returns the line joined with its continuation (or None)."""
        text = line.text
        joined = self._joined(line)
        # a terminal may cut a keyword itself ("Free memory on dev" / "ice"): look for it in the joined text too
        squeezed = joined.replace(" ", "") if joined is not None else None
        if not any(k in text for k in self._keywords) and (
                squeezed is None or not any(k in squeezed for k in self._squeezed_keywords)):
            return joined
        cut = len(text.rstrip())
        matched: set[str] = set()
        for entry in self._entries:
            if not any(k in text for k in entry.keywords):
                if squeezed is None or not any(k.replace(" ", "") in squeezed for k in entry.keywords):
                    continue
            if entry.strong_only and not strong:
                continue
            if entry.previous is not None and not (entry.previous.search(self._prev_text)
                                                   or entry.previous.search(self._prev_joined)):
                continue
            m = entry.regex.search(text)
            if joined is not None:
                # the joined text yields the numbers a wrap moved to the next line
                mj = entry.loose.search(joined)
                if mj and mj.start() < cut and (m is None or (_filled(mj), mj.end() - mj.start()) > (_filled(m), m.end() - m.start())):
                    m = mj
            if m is None or m.start() >= cut:
                continue
            cls = self._classify(entry)
            # one message of a family per line: the more specific entry (listed first) wins
            if cls in matched or (entry.kind == "cause" and matched):
                continue
            matched.add(cls)
            self._dispatch(entry, cls, line, m, strong)
        return joined

    def _classify(self, entry: Entry) -> str:
        if entry.class_by == "graph_capture":
            in_capture = self._run.graph_capture or any(w in f for f in self._frames for w in _GRAPH_WORDS)
            return entry.event_class if in_capture else TORCH_OOM
        return entry.event_class

    def _dispatch(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str], strong: bool) -> None:
        remedy = getattr(self, f"_remedy_{entry.remedy}")
        run = self._run
        if entry.kind == "soft":
            remedy(entry, cls, line, m)
            return
        cand = _Candidate(cls, "", line.number, strong and entry.kind == "failure",
                          build=lambda: remedy(entry, cls, line, m), absorbs=entry.absorbs)
        if entry.kind == "cause":
            # may be the cause chained under a vLLM message: wait, the message absorbs it when it follows
            run.active = True
            run.pending.append(cand)
        else:
            self._add(cand)

    def _add(self, cand: _Candidate) -> None:
        run = self._run
        run.active = True
        if cand.event_class in run.emitted:
            return
        if not cand.strong:
            run.pending.append(cand)
            return
        absorbed = [p for p in run.pending if p.event_class in cand.absorbs]
        run.pending = [p for p in run.pending
                       if p.event_class != cand.event_class and all(p is not a for a in absorbed)]
        if absorbed:
            cand.payload["absorbed"] = absorbed
        # the absorbed causes are reprinted by every copy of the traceback: they belong to this failure
        run.emitted.update(cand.absorbs)
        self._emit(cand)

    def _emit(self, cand: _Candidate) -> None:
        run = self._run
        run.emitted.add(cand.event_class)
        assert cand.build is not None
        event = cand.build()
        if cand.payload.get("absorbed"):
            extra = dict(event.values)
            for p in cand.payload["absorbed"]:
                if p.build is not None:
                    for k, v in p.build().values.items():
                        extra.setdefault(f"cause_{k}", v)
            event = _replace(event, values=extra)
        self._out.append(event)

    def _flush_pending(self, force: bool) -> None:
        run = self._run
        if not run.pending:
            return
        keep: list[_Candidate] = []
        for cand in run.pending:
            if force or self._line_no - cand.line > self.obs.pending_horizon_lines:
                if cand.event_class not in run.emitted:
                    self._emit(cand)
            else:
                keep.append(cand)
        run.pending = keep

    def _soft_signal(self, kind: str, line: LogLine, build: Callable[[int, float | None], ObserverEvent]) -> None:
        """Count a soft signal; one event when the rate is sustained, none more while the episode lasts.

        An episode ends when no signal of its kind came for ``preemption_window_seconds`` (by the log's
        timestamps; without timestamps a run is one episode).
        """
        ep = self._run.episodes.setdefault(kind, _Episode())
        window = self.obs.preemption_window_seconds
        if ep.last is not None and line.timestamp is not None and ep.last[0] is not None and line.timestamp - ep.last[0] > window:
            ep.signals.clear()
            ep.reported = False
        ep.last = (line.timestamp, line.number)
        if ep.reported:
            return
        ep.signals.append((line.timestamp, line.number))
        if line.timestamp is not None:
            while ep.signals and ep.signals[0][0] is not None and line.timestamp - ep.signals[0][0] > window:
                ep.signals.popleft()
        if len(ep.signals) >= self.obs.preemption_count:
            first = ep.signals[0]
            span = (line.timestamp - first[0]) if (line.timestamp is not None and first[0] is not None) else None
            count = len(ep.signals)
            ep.signals.clear()
            ep.reported = True
            self._run.active = True
            self._out.append(build(count, span))

    # ----------------------------------------------------------------- values and fixes
    def _value(self, param: str, from_message: Decimal | None = None) -> tuple[Decimal | None, str]:
        if from_message is not None:
            return from_message, "log message"
        if param in self.current:
            return self.current[param], "current"
        if param in self._run.log_config:
            return self._run.log_config[param], "log"
        if param == GMU:  # version-aware: 0.9 up to 0.17, 0.92 from 0.20 (catalogue defaults)
            version = self.version or self.min_version
            return default_gmu(version), f"vLLM {version} default" if version else "vLLM default"
        return vllm_defaults(self.version)[param], "vLLM default"

    def _total(self) -> Decimal | None:
        return self._run.ctx.get("total_gib", self.gpu_total_gib)

    def _act(self, name: str) -> Actuator:
        return self.settings.actuators[name]

    def _event(self, cls: str, variant: str, line: LogLine, values: dict[str, Decimal | int], *, escalate: bool, reason: str,
               fix: dict[str, Decimal] | None, alternatives: Iterable[dict[str, Decimal]] = (), context_keys: Iterable[str] = ()) -> ObserverEvent:
        evidence = [(line.number, line.text.strip()[:500])]
        for key in context_keys:
            if key in self._run.ctx_lines and self._run.ctx_lines[key] not in evidence:
                evidence.append(self._run.ctx_lines[key])
        evidence.sort()
        seed = {k: self._act(k).python_value(v) for k, v in fix.items()} if fix else None
        alts = tuple({k: self._act(k).python_value(v) for k, v in a.items()} for a in alternatives)
        return ObserverEvent(cls, line.number, {k: _num(v) for k, v in values.items() if v is not None}, escalate, reason,
                             seed, self.version, SUBSYSTEM, variant, alts, tuple(evidence))

    def _computed(self, name: str, current: Decimal | None, target: Decimal, direction: str) -> tuple[Decimal | None, str]:
        """Snap a computed minimal target in the safe direction; (value, '') or (None, why escalate)."""
        act = self._act(name)
        snapped = act.snap(target, direction)  # type: ignore[arg-type]
        short = name.split(".", 1)[1]
        if direction == "lower":
            if snapped < act.lower:
                return None, f"{short} would have to drop to {act.format(snapped)}, below the bound {act.format(act.lower)}"
            snapped = min(snapped, act.upper)  # safe side of the bound: a bigger cut than needed
            if current is not None and snapped >= current:
                return None, f"{short} is already {act.format(current)}, no lower value on the grid fixes it"
        else:
            if snapped > act.upper:
                return None, f"{short} would have to rise to {act.format(snapped)}, above the bound {act.format(act.upper)}"
            snapped = max(snapped, act.lower)
            if current is not None and snapped <= current:
                snapped = act.step_up(current)
                if snapped > act.upper:
                    return None, f"{short} is already at the bound {act.format(act.upper)}"
        return snapped, ""

    def _stepped(self, name: str, current: Decimal, direction: str) -> Decimal | None:
        """One heuristic step (no numbers to compute from); None when already at the bound."""
        act = self._act(name)
        if direction == "lower":
            if current <= act.lower:
                return None
            return min(max(act.step_down(current), act.lower), act.upper)
        if current >= act.upper:
            return None
        return max(min(act.step_up(current), act.upper), act.lower)

    # ================================================================= remedies (catalogue `remedy.function`)
    # Each `_remedy_<name>(entry, cls, line, match)` turns the numbers of one message into an event.

    # -- startup: free memory
    def _remedy_lower_gmu_to_free(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        free, total, gmu, req = (Decimal(m[k]) for k in ("free", "total", "gmu", "req"))
        variant = entry.variant if entry.variant != "D" else ("D'" if m["device"] else "D")
        margin = self.obs.free_memory_margin
        values: dict[str, Decimal | int] = {"free_gib": free, "total_gib": total, "gpu_memory_utilization": gmu, "requested_gib": req}
        if "node" in m.groupdict():
            values["numa_node"] = int(m["node"])
        if total <= 0:
            return self._event(cls, variant, line, values, escalate=True, fix=None,
                               reason=f"the device reports a total of {_fmt(total)} GiB; nothing to tune")
        ratio = free / total
        target = ratio - margin
        where = f" on {m['device']}" if m.groupdict().get("device") else ""
        head = (f"only {_fmt(free)} of {_fmt(total)} GiB are free{where} at startup but gpu_memory_utilization {_fmt(gmu)} "
                f"asks for {_fmt(req)} GiB; free/total − margin = {_fmt(ratio, 4)} − {_fmt(margin)} = {_fmt(target, 4)}")
        return self._lower_gmu_to(cls, variant, line, values, gmu, target, head, total - free)

    def _remedy_lower_gmu_external(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        free, total, gmu, engine = (Decimal(m[k]) for k in ("free", "total", "gmu", "req"))
        values: dict[str, Decimal | int] = {"free_gib": free, "total_gib": total, "gpu_memory_utilization": gmu, "requested_gib": engine}
        if total <= 0:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                               reason=f"the GPU reports a total of {_fmt(total)} GiB; nothing to tune")
        # vLLM checks free ≥ total·gmu − external, and external = total·gmu − engine: every step of gmu
        # moves the budget by total·step while the external weights stay counted
        margin = self.obs.free_memory_margin
        external = total * gmu - engine
        values["external_gib"] = external.quantize(Decimal("0.01"))
        target = gmu + (free - engine) / total - margin
        head = (f"only {_fmt(free)} of {_fmt(total)} GiB are free at startup but the engine's budget after the "
                f"{_fmt(external, 2)} GiB of externally held weights is {_fmt(engine)} GiB; gmu + (free − budget)/total − margin = "
                f"{_fmt(gmu)} + ({_fmt(free)} − {_fmt(engine)})/{_fmt(total)} − {_fmt(margin)} = {_fmt(target, 4)}")
        return self._lower_gmu_to(cls, entry.variant, line, values, gmu, target, head, total - free - external)

    def _lower_gmu_to(self, cls: str, variant: str, line: LogLine, values: dict[str, Decimal | int], gmu: Decimal,
                      target: Decimal, head: str, others: Decimal | None) -> ObserverEvent:
        values["target_gpu_memory_utilization"] = target.quantize(Decimal("0.0001"))
        new, why = self._computed(GMU, gmu, target, "lower")
        if new is None:
            held = f": other processes hold about {_fmt(others, 2)} GiB — free it or move vLLM" if others is not None and others > 0 else ""
            return self._event(cls, variant, line, values, escalate=True, fix=None, reason=f"{head}; {why}{held}")
        return self._event(cls, variant, line, values, escalate=False, fix={GMU: new},
                           reason=f"{head}; lower gpu_memory_utilization to {self._act(GMU).format(new)} (floored to the "
                                  f"{self._act(GMU).format(self._act(GMU).step)} grid)")

    def _remedy_lower_gmu_by_deficit(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        alloc, deficit = Decimal(m["alloc"]), Decimal(m["deficit"])
        gmu, source = self._value(GMU)
        assert gmu is not None
        values: dict[str, Decimal | int] = {"allocation_mb": alloc, "deficit_mb": deficit, "gpu_memory_utilization": gmu}
        if alloc <= 0:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None, reason="the allocation is not positive")
        target = gmu * (alloc - deficit) / alloc
        head = (f"vLLM's allocation of {_fmt(alloc)} MB is {_fmt(deficit)} MB short at gpu_memory_utilization {_fmt(gmu)} ({source}); "
                f"{_fmt(gmu)} × ({_fmt(alloc)} − {_fmt(deficit)})/{_fmt(alloc)} = {_fmt(target, 4)}")
        return self._lower_gmu_to(cls, entry.variant, line, values, gmu, target, head, None)

    def _remedy_gmu_into_bounds(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        gmu = Decimal(m["gmu"])
        act = self._act(GMU)
        values = {"gpu_memory_utilization": gmu}
        if gmu <= 0:
            return self._event(cls, entry.variant, line, values, escalate=False, fix={GMU: act.lower},
                               reason=f"gpu_memory_utilization {_fmt(gmu)} is rejected by vLLM (must be > 0); set it to the "
                                      f"lower bound {act.format(act.lower)}")
        new, why = self._computed(GMU, gmu, act.upper, "lower")
        if new is None:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                               reason=f"gpu_memory_utilization {_fmt(gmu)} is rejected by vLLM (must be ≤ 1); {why}")
        return self._event(cls, entry.variant, line, values, escalate=False, fix={GMU: new},
                           reason=f"gpu_memory_utilization {_fmt(gmu)} is rejected by vLLM (must be < 1.0); set it to the "
                                  f"upper bound {act.format(new)}")

    def _remedy_raise_gmu_above_external(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        external, total, gmu, req = (Decimal(m[k]) for k in ("external", "total", "gmu", "req"))
        act = self._act(GMU)
        values: dict[str, Decimal | int] = {"external_gib": external, "total_gib": total, "gpu_memory_utilization": gmu, "requested_gib": req}
        if total <= 0:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None, reason="the GPU reports no memory")
        # the budget must exceed the external share by at least one step, or the engine keeps nothing
        target = external / total + act.step
        values["target_gpu_memory_utilization"] = target.quantize(Decimal("0.0001"))
        head = (f"{_fmt(external)} of {_fmt(total)} GiB are held by another process, more than gpu_memory_utilization "
                f"{_fmt(gmu)} grants ({_fmt(req)} GiB); external/total + one step = {_fmt(target, 4)}")
        new, why = self._computed(GMU, gmu, target, "raise")
        if new is None:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                               reason=f"{head}; {why}: the other process leaves nothing for vLLM — no setting of ours frees it")
        return self._event(cls, entry.variant, line, values, escalate=False, fix={GMU: new},
                           reason=f"{head}; raise gpu_memory_utilization to {act.format(new)} (ceiled to the grid)")

    # -- KV cache budget
    def _builder_a(self, line: LogLine, variant: str) -> Callable[[], ObserverEvent]:
        return lambda: self._raise_gmu_for_kv(KV_NO_MEMORY, variant, line, None)

    def _remedy_raise_gmu_kv_deficit(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        variant = entry.variant if entry.variant != "A" else ("A'" if m["cpu"] else "A")
        return self._raise_gmu_for_kv(cls, variant, line, None)

    def _remedy_raise_gmu_by_shortfall(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        reserved, avail = Decimal(m["reserved"]), Decimal(m["avail"])
        return self._raise_gmu_for_kv(cls, entry.variant, line, reserved - avail,
                                      {"reserved_gib": reserved, "available_gib": avail})

    def _raise_gmu_for_kv(self, cls: str, variant: str, line: LogLine, shortfall: Decimal | None,
                          extra: dict[str, Decimal] | None = None) -> ObserverEvent:
        ctx = self._run.ctx
        gmu, source = self._value(GMU, ctx.get("profile_gmu"))
        assert gmu is not None
        total = self._total()
        deficit = shortfall
        # vLLM prints the budget rounded to 0.01 GiB: the true deficit may be up to half a unit larger, and
        # a budget of exactly 0 still fails ("<= 0"), so the printed deficit plus 0.005 GiB is the minimum.
        if deficit is None and ctx.get("available_kv_gib") is not None and ctx["available_kv_gib"] <= 0:
            deficit = -ctx["available_kv_gib"]
        elif deficit is None and ctx.get("kv_reserved_gib") is not None and ctx["kv_reserved_gib"] <= 0:
            deficit = -ctx["kv_reserved_gib"]
        values: dict[str, Decimal | int] = dict(extra or {}, gpu_memory_utilization=gmu)
        if deficit is not None:
            values["deficit_gib"] = deficit
        if total is not None:
            values["total_gib"] = total
        if "gpu_blocks" in ctx:
            values["gpu_blocks"] = ctx["gpu_blocks"]
        keys = ("available_kv_gib", "kv_reserved_gib", "total_gib", "gpu_blocks")
        head = f"no memory is left for the KV cache at gpu_memory_utilization {_fmt(gmu)} ({source})"
        act = self._act(GMU)
        if gmu >= act.upper:
            return self._event(cls, variant, line, values, escalate=True, fix=None, context_keys=keys,
                               reason=f"{head}; it is already at the bound {act.format(act.upper)}: weights, activations "
                                      f"and graphs use the whole budget — a smaller model or a bigger GPU is needed")
        if deficit is not None and total is not None and total > 0:
            target = gmu + (deficit + PRINT_SLACK_GIB) / total
            values["target_gpu_memory_utilization"] = target.quantize(Decimal("0.0001"))
            new, why = self._computed(GMU, gmu, target, "raise")
            calc = (f"the KV cache is {_fmt(deficit)} GiB short: {_fmt(gmu)} + ({_fmt(deficit)} + {_fmt(PRINT_SLACK_GIB)})/{_fmt(total)} "
                    f"= {_fmt(target, 4)}")
            if new is None:
                return self._event(cls, variant, line, values, escalate=True, fix=None, context_keys=keys,
                                   reason=f"{head}; {calc}; {why}")
            return self._event(cls, variant, line, values, escalate=False, fix={GMU: new}, context_keys=keys,
                               reason=f"{head}; {calc}; raise gpu_memory_utilization to {act.format(new)} (ceiled to the grid)")
        new = self._stepped(GMU, gmu, "raise")
        assert new is not None
        return self._event(cls, variant, line, values, escalate=False, fix={GMU: new}, context_keys=keys,
                           reason=f"{head}; the log gives no deficit, so raise gpu_memory_utilization one step to {act.format(new)}")

    # -- max_model_len
    def _max_len_fix(self, cls: str, variant: str, line: LogLine, values: dict[str, Decimal | int], current: Decimal,
                     target: Decimal, head: str, alternatives: Iterable[dict[str, Decimal]] = (), keys: Iterable[str] = ()) -> ObserverEvent:
        act = self._act(MAX_MODEL_LEN)
        if current > act.upper:
            return self._event(cls, variant, line, values, escalate=True, fix=None, context_keys=keys,
                               reason=f"{head}; max_model_len {act.format(current)} is above the bound {act.format(act.upper)}: "
                                      f"cutting it into bounds is too large a change to make silently")
        new, why = self._computed(MAX_MODEL_LEN, current, target, "lower")
        if new is None:
            return self._event(cls, variant, line, values, escalate=True, fix=None, context_keys=keys, reason=f"{head}; {why}")
        return self._event(cls, variant, line, values, escalate=False, fix={MAX_MODEL_LEN: new}, alternatives=alternatives,
                           context_keys=keys, reason=f"{head}; lower max_model_len to {act.format(new)} (floored to the 512 grid)")

    def _remedy_lower_max_len_to_tokens(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        mml, tokens = Decimal(m["mml"]), Decimal(m["tokens"])
        values = {"max_model_len": mml, "kv_cache_tokens": tokens}
        head = f"max_model_len {mml} is larger than the {tokens} tokens the KV cache can hold"
        return self._max_len_fix(cls, entry.variant, line, values, mml, tokens, head)

    def _remedy_lower_max_len_to_derived(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        n, derived = Decimal(m["n"]), Decimal(m["derived"])
        values = {"max_model_len": n, "derived_max_model_len": derived}
        head = f"max_model_len {n} exceeds the model's own limit ({m['key']}={_fmt(derived)} in config.json)"
        return self._max_len_fix(cls, entry.variant, line, values, n, derived, head)

    def _remedy_lower_max_len_to_batched(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        mbt, mml = Decimal(m["mbt"]), Decimal(m["mml"])
        values = {"max_num_batched_tokens": mbt, "max_model_len": mml}
        head = f"max_num_batched_tokens {mbt} is smaller than max_model_len {mml} (chunked prefill is off)"
        return self._max_len_fix(cls, entry.variant, line, values, mml, mbt, head)

    def _remedy_lower_max_len_to_capacity(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        ctx = self._run.ctx
        values: dict[str, Decimal | int] = {}
        if "prompt" in m.groupdict():
            values["prompt_tokens"] = Decimal(m["prompt"])
        # V0 block size is 16 tokens unless set: "# cuda blocks: N" gives the capacity
        tokens = ctx.get("kv_tokens") if "kv_tokens" in ctx else (ctx["gpu_blocks"] * 16 if "gpu_blocks" in ctx else None)
        head = "a request does not fit in the KV cache (V0 scheduler)"
        if tokens is None:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                               reason=f"{head}; the log does not say how many tokens the KV cache holds, so no length can be computed")
        values["kv_cache_tokens"] = tokens
        mml, _src = self._value(MAX_MODEL_LEN)
        current = mml if mml is not None else self._act(MAX_MODEL_LEN).upper
        return self._max_len_fix(cls, entry.variant, line, values, current, tokens,
                                 f"{head}; the KV cache holds {_fmt(tokens)} tokens", keys=("kv_tokens", "gpu_blocks"))

    def _remedy_one_request(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        mml = Decimal(_int(m["mml"]))
        variant = "C''" if not m["typo"] else ("C'" if m["est"] else "C")
        values: dict[str, Decimal | int] = {"max_model_len": mml}
        act_len = self._act(MAX_MODEL_LEN)
        if m["needed"] is None:  # the message was cut after the length (a truncated paste)
            head = f"one request of max_model_len {mml} does not fit in the KV cache (the rest of the message is cut)"
            if mml > act_len.upper:
                return self._max_len_fix(cls, variant, line, values, mml, mml, head)
            new = self._stepped(MAX_MODEL_LEN, mml, "lower")
            return self._event(cls, variant, line, values, escalate=new is None, fix={MAX_MODEL_LEN: new} if new else None,
                               reason=f"{head}; no numbers to compute from, lower max_model_len one step" if new else f"{head}; at the floor")
        needed, avail = Decimal(m["needed"]), Decimal(m["avail"])
        values.update(needed_gib=needed, available_gib=avail)
        head = f"one request of max_model_len {mml} needs {_fmt(needed)} GiB of KV cache but only {_fmt(avail)} GiB are available"
        gmu, gsrc = self._value(GMU)
        total = self._total()
        gmu_fix: Decimal | None = None
        gmu_why = f"gpu_memory_utilization {_fmt(gmu or 0)} ({gsrc}) is already at the bound"
        if total and gmu is not None:
            target = gmu + (needed - avail + PRINT_SLACK_GIB) / total
            values["target_gpu_memory_utilization"] = target.quantize(Decimal("0.0001"))
            gmu_fix, gmu_why = self._computed(GMU, gmu, target, "raise")
        elif gmu is not None:  # no total to compute from: one step, as for kv_cache_no_memory
            gmu_fix = self._stepped(GMU, gmu, "raise")
        est = Decimal(_int(m["est"])) if m["est"] else None
        if avail <= 0 or needed <= 0 or (est is not None and est <= 0):
            # no length fits: vLLM's other advice — raise gmu — is the fix when there is room
            if gmu_fix is not None:
                how = (f"({_fmt(needed)} − {_fmt(avail)} + {_fmt(PRINT_SLACK_GIB)})/{_fmt(total)} more" if total
                       else "one step, the log gives no total to compute from")
                return self._event(cls, variant, line, values, escalate=False, fix={GMU: gmu_fix}, context_keys=("total_gib",),
                                   reason=f"{head}; no length fits, raise gpu_memory_utilization from {_fmt(gmu or 0)} ({gsrc}) to "
                                          f"{self._act(GMU).format(gmu_fix)}: {how}")
            return self._event(cls, variant, line, values, escalate=True, fix=None, reason=f"{head}; no length fits and {gmu_why}")
        if est is not None:
            target_len = est
            values["estimated_max_model_len"] = est
            head += f"; vLLM estimates a maximum length of {est}"
        else:
            target_len = (mml * avail / needed).to_integral_value(rounding="ROUND_FLOOR")
            values["computed_max_model_len"] = target_len
            head += f"; {mml} × {_fmt(avail)}/{_fmt(needed)} = {target_len} tokens fit"
        alternatives = [{GMU: gmu_fix}] if gmu_fix is not None else []
        return self._max_len_fix(cls, variant, line, values, mml, target_len, head, alternatives, ("total_gib",))

    # -- max_num_seqs
    def _seqs_to(self, cls: str, variant: str, line: LogLine, values: dict[str, Decimal | int], limit: Decimal, head: str,
                 alternatives: Iterable[dict[str, Decimal]] = ()) -> ObserverEvent:
        act = self._act(MAX_NUM_SEQS)
        new = act.floor_to_step(limit)
        if new < act.lower:
            return self._event(cls, variant, line, values, escalate=True, fix=None,
                               reason=f"{head}; max_num_seqs would have to drop to {act.format(new)}, below the bound {act.format(act.lower)}")
        new = min(new, act.upper)
        return self._event(cls, variant, line, values, escalate=False, fix={MAX_NUM_SEQS: new}, alternatives=alternatives,
                           reason=f"{head}; lower max_num_seqs to {act.format(new)} (at most {_fmt(limit)}, within the bounds)")

    def _remedy_lower_seqs_to_blocks(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        seqs, blocks = Decimal(m["seqs"]), Decimal(m["blocks"])
        values = {"max_num_seqs": seqs, "mamba_cache_blocks": blocks}
        gmu, _ = self._value(GMU)
        alt = self._stepped(GMU, gmu, "raise") if gmu is not None else None  # vLLM names it: more memory, more blocks
        head = f"max_num_seqs {seqs} exceeds the {blocks} Mamba cache blocks (one per decode sequence)"
        return self._seqs_to(cls, entry.variant, line, values, blocks, head, [{GMU: alt}] if alt is not None else [])

    def _remedy_lower_seqs_to_batched(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        mbt, seqs = Decimal(m["mbt"]), Decimal(m["seqs"])
        values = {"max_num_batched_tokens": mbt, "max_num_seqs": seqs}
        return self._seqs_to(cls, entry.variant, line, values, mbt, f"max_num_batched_tokens {mbt} is below max_num_seqs {seqs}")

    def _remedy_halve_seqs(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        n = Decimal(m["n"])
        variant = "E" if m["what"] == "sampler" else "E-pooler"
        act = self._act(MAX_NUM_SEQS)
        values: dict[str, Decimal | int] = {"num_dummy_requests": n}
        task = f" (task={m['task']})" if m["task"] else ""
        head = f"CUDA ran out of memory warming up the {m['what']}{task} with {n} dummy requests (= max_num_seqs)"
        if n <= act.lower:
            gmu, _ = self._value(GMU)
            alt = self._stepped(GMU, gmu, "lower") if gmu is not None else None
            if alt is not None:
                return self._event(cls, variant, line, values, escalate=False, fix={GMU: alt},
                                   reason=f"{head}; max_num_seqs is at its floor {act.format(act.lower)}, lower "
                                          f"gpu_memory_utilization one step to {self._act(GMU).format(alt)}")
            return self._event(cls, variant, line, values, escalate=True, fix=None,
                               reason=f"{head}; max_num_seqs is already at its floor {act.format(act.lower)}")
        new = min(max(act.floor_to_step(n / 2), act.lower), act.upper)
        note = f" (the bound {act.format(act.upper)}; halving gives {_fmt(n / 2)})" if act.floor_to_step(n / 2) > act.upper else ""
        return self._event(cls, variant, line, values, escalate=False, fix={MAX_NUM_SEQS: new},
                           reason=f"{head}; halve max_num_seqs to {act.format(new)}{note}")

    # -- CPU backend
    def _remedy_lower_gmu_cpu_kv(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        free, total, kv, req = (Decimal(m[k]) for k in ("free", "total", "kv", "req"))
        values: dict[str, Decimal | int] = {"numa_node": int(m["node"]), "free_gib": free, "total_gib": total,
                                            "kv_cache_gib": kv, "requested_gib": req}
        if total <= 0:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None, reason="the node reports no memory")
        gmu = (req / total).quantize(Decimal("0.01"))  # requested = total·gmu on the CPU backend
        values["gpu_memory_utilization"] = gmu
        margin = self.obs.free_memory_margin
        target = gmu - (kv - free + margin * total) / total
        head = (f"the KV cache wants {_fmt(kv)} GiB but only {_fmt(free)} of {_fmt(total)} GiB are available on NUMA node {m['node']} "
                f"(gmu {_fmt(gmu)} = {_fmt(req)}/{_fmt(total)}); gmu − (kv − free + margin·total)/total = {_fmt(target, 4)}")
        return self._lower_gmu_to(cls, entry.variant, line, values, gmu, target, head, None)

    def _remedy_raise_gmu_to_printed(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        consumed, req, minimum = Decimal(m["consumed"]), Decimal(m["req"]), Decimal(m["min_gmu"])
        values: dict[str, Decimal | int] = {"consumed_gib": consumed, "requested_gib": req, "numa_node": int(m["node"]),
                                            "minimum_gpu_memory_utilization": minimum}
        act = self._act(GMU)
        new = act.ceil_to_step(minimum)
        if new <= minimum:  # "more than" the printed value
            new += act.step
        head = f"the worker uses {_fmt(consumed)} GiB, more than the {_fmt(req)} GiB reserved; vLLM asks for more than {_fmt(minimum)}"
        if new > act.upper:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                               reason=f"{head}; {act.format(new)} is above the bound {act.format(act.upper)}")
        return self._event(cls, entry.variant, line, values, escalate=False, fix={GMU: max(new, act.lower)},
                           reason=f"{head}; raise gpu_memory_utilization to {act.format(max(new, act.lower))}")

    # -- escalations without arithmetic
    def _remedy_escalate_no_actuator(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        values: dict[str, Decimal | int] = {"numa_node": int(m["node"]), "free_gib": Decimal(m["free"]),
                                            "total_gib": Decimal(m["total"]), "kv_cache_gib": Decimal(m["kv"])}
        return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                           reason=f"the KV cache size was set explicitly to {m['kv']} GiB but only {m['free']} GiB are available; "
                                  f"--kv-cache-memory-bytes / VLLM_CPU_KVCACHE_SPACE are no setting of ours")

    def _remedy_escalate_weights(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        return self._event(cls, entry.variant, line, {}, escalate=True, fix=None,
                           reason="the model weights do not fit on the GPU while loading; more tensor parallelism or "
                                  "quantization is needed — no setting of ours makes them fit")

    def _remedy_escalate_profiling(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        variant = "G''" if (m["u1"] or m["cont"]) else ("G'" if m["init"] else "G")
        values: dict[str, Decimal | int] = {}
        if m["init"]:
            init, cur = Decimal(m["init"]), Decimal(m["cur"])
            if not m["u1"]:  # bytes (0.6.3.post1, V0, XPU)
                init, cur = init / GIB, cur / GIB
            kind = m["kind"]
            values = {f"initial_{kind}_gib": init.quantize(Decimal("0.01")), f"current_{kind}_gib": cur.quantize(Decimal("0.01"))}
            head = (f"memory profiling failed: {kind} GPU memory went from {_fmt(values[f'initial_{kind}_gib'])} to "
                    f"{_fmt(values[f'current_{kind}_gib'])} GiB while vLLM was profiling")
        else:
            head = "memory profiling failed: GPU memory was not cleaned up before vLLM started"
        return self._event(cls, variant, line, values, escalate=True, fix=None,
                           reason=f"{head}; another process changed its GPU memory — an environment problem no setting fixes")

    # -- OOMs below vLLM
    def _remedy_torch_oom(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        values: dict[str, Decimal | int] = {"tried_gib": _gib(m["tried"], m["tu"])}
        total = free = this = None
        others = None
        g = m.groupdict()
        if g.get("total"):
            total, free = _gib(m["total"], m["totu"]), _gib(m["free"], m["fu"])
            values.update(gpu=int(m["gpu"]), total_gib=total, free_gib=free)
            rest = m["rest"] or ""
            if tm := _RE_TORCH_THIS.search(rest):
                this = _gib(tm["p"], tm["u"])
                others = total - free - this
            else:
                procs = [(int(p["pid"]), _gib(p["p"], p["u"])) for p in _RE_TORCH_PROC.finditer(rest)]
                if procs:
                    # which one is vLLM: the pid of the log prefix if listed, else the biggest
                    own = [gb for pid, gb in procs if pid == line.pid]
                    this = own[0] if own else max(gb for _, gb in procs)
                    others = sum(gb for _, gb in procs) - this
            if this is not None:
                values["process_gib"] = this
            if others is not None:
                values["other_processes_gib"] = max(others, Decimal(0))
        elif g.get("total_old"):
            total = _gib(m["total_old"], m["totu_old"])
            values.update(gpu=int(m["gpu_old"]), total_gib=total)
            if fm := _RE_TORCH_OLD_FREE.search(m["rest_old"] or ""):
                values["free_gib"] = _gib(fm["f"], fm["u"])
        device = {HIP_OOM: "ROCm GPU", XPU_OOM: "XPU"}.get(cls, "GPU")
        head = f"PyTorch ran out of {device} memory trying to allocate {_fmt(values['tried_gib'], 2)} GiB"
        if total is not None and free is not None:
            head += f" ({_fmt(free, 2)} of {_fmt(total, 2)} GiB free)"
        if total is not None and values["tried_gib"] > total:  # type: ignore[operator]
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                               reason=f"{head}; one allocation is larger than the whole {_fmt(total, 2)} GiB card — no "
                                      f"setting of ours can make it fit (a smaller batch, input or model is needed)")
        if others is not None and total and others > total * self.obs.foreign_memory_fraction:
            return self._event(cls, entry.variant, line, values, escalate=True, fix=None,
                               reason=f"{head}; other processes hold {_fmt(others, 2)} GiB, more than "
                                      f"{_fmt(self.obs.foreign_memory_fraction * 100, 0)} % of the GPU — no setting of ours frees it")
        return self._one_step_down(cls, entry.variant, line, values, head)

    def _remedy_one_step_down(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> ObserverEvent:
        heads = {"cuda_error": "CUDA error: out of memory", "cumem": "CUDA out of memory in vLLM's cumem allocator (sleep mode)",
                 "nccl": "NCCL could not allocate its buffers: Cuda failure 'out of memory'"}
        head = heads.get(entry.variant, entry.variant) + (" during CUDA graph capture" if cls == GRAPH_OOM else "")
        return self._one_step_down(cls, entry.variant, line, {}, head)

    def _one_step_down(self, cls: str, variant: str, line: LogLine, values: dict[str, Decimal | int], head: str) -> ObserverEvent:
        gmu, gsrc = self._value(GMU)
        assert gmu is not None
        values = dict(values, gpu_memory_utilization=gmu)
        new = self._stepped(GMU, gmu, "lower")
        if new is not None:
            return self._event(cls, variant, line, values, escalate=False, fix={GMU: new},
                               reason=f"{head}; lower gpu_memory_utilization one step from {_fmt(gmu)} ({gsrc}) to "
                                      f"{self._act(GMU).format(new)} (never raise it on an OOM)")
        seqs, ssrc = self._value(MAX_NUM_SEQS)
        assert seqs is not None
        values["max_num_seqs"] = seqs
        new = self._stepped(MAX_NUM_SEQS, seqs, "lower")
        if new is not None:
            return self._event(cls, variant, line, values, escalate=False, fix={MAX_NUM_SEQS: new},
                               reason=f"{head}; gpu_memory_utilization is at its floor {_fmt(gmu)}, lower max_num_seqs from "
                                      f"{_fmt(seqs)} ({ssrc}) to {self._act(MAX_NUM_SEQS).format(new)}")
        return self._event(cls, variant, line, values, escalate=True, fix=None,
                           reason=f"{head}; gpu_memory_utilization ({_fmt(gmu)}) and max_num_seqs ({_fmt(seqs)}) are at their floors")

    # -- soft signals: V0 preemption warnings and stats lines
    def _remedy_preemption(self, entry: Entry, cls: str, line: LogLine, m: re.Match[str]) -> None:
        g = m.groupdict()
        extra: dict[str, Decimal] = {}
        if entry.variant == "F":
            if g.get("n"):
                extra["total_num_cumulative_preemption"] = Decimal(m["n"])
        else:
            kv, wait = Decimal(m["kv"]), int(m["wait"])
            preempt = int(g["preempt"] or 0)
            swapped = int(g["swapped"] or 0)
            self.telemetry.update(running_reqs=int(m["run"]), waiting_reqs=wait, kv_cache_usage_percent=_num(kv))
            if not (preempt > 0 or swapped > 0 or (wait > 0 and kv >= self.obs.kv_pressure_percent)):
                return
            extra = {"kv_cache_usage_percent": kv, "waiting_reqs": Decimal(wait)}
            if preempt:
                extra["preemptions"] = Decimal(preempt)
            if swapped:
                extra["swapped_reqs"] = Decimal(swapped)
        self._soft_signal(entry.id, line, lambda count, span: self._build_preemption(cls, line, entry.variant, count, span, extra))

    def _build_preemption(self, cls: str, line: LogLine, variant: str, count: int, span: float | None,
                          extra: dict[str, Decimal]) -> ObserverEvent:
        values: dict[str, Decimal | int] = dict(extra, signals=count)
        if span is not None:
            values["window_seconds"] = int(span)
        what = "preemption warnings" if variant == "F" else "stats lines with KV-cache pressure (preemptions, or a full cache with waiting requests)"
        head = f"{count} {what}" + (f" within {int(span)} s" if span is not None else "")
        gmu, gsrc = self._value(GMU)
        assert gmu is not None
        values["gpu_memory_utilization"] = gmu
        new = self._stepped(GMU, gmu, "raise")
        if new is not None:
            return self._event(cls, variant, line, values, escalate=False, fix={GMU: new},
                               reason=f"{head}: the KV cache is too small; raise gpu_memory_utilization one step from "
                                      f"{_fmt(gmu)} ({gsrc}) to {self._act(GMU).format(new)}")
        seqs, ssrc = self._value(MAX_NUM_SEQS)
        assert seqs is not None
        values["max_num_seqs"] = seqs
        new_s = self._stepped(MAX_NUM_SEQS, seqs, "lower")
        if new_s is not None:
            return self._event(cls, variant, line, values, escalate=False, fix={MAX_NUM_SEQS: new_s},
                               reason=f"{head}: gpu_memory_utilization is at its bound {_fmt(gmu)}, so lower max_num_seqs from "
                                      f"{_fmt(seqs)} ({ssrc}) to {self._act(MAX_NUM_SEQS).format(new_s)}")
        return self._event(cls, variant, line, values, escalate=True, fix=None,
                           reason=f"{head}: gpu_memory_utilization and max_num_seqs are both at their bounds")


def _filled(m: re.Match[str]) -> int:
    return sum(g is not None for g in m.groups())


def _replace(event: ObserverEvent, **changes: Any) -> ObserverEvent:
    from dataclasses import replace

    return replace(event, **changes)


# --------------------------------------------------------------------------- convenience

def observe_lines(lines: Iterable[str], *, settings: TuningSettings | None = None,
                  current: Mapping[str, float | int | str | Decimal] | None = None,
                  gpu_total_gib: float | Decimal | None = None) -> list[ObserverEvent]:
    """All events of a complete log given as lines.

    A big batch (a follower's read of a fast-growing log) goes through the prefilter like a file does;
    a small one is read line by line in full.
    """
    obs = Observer(settings, current=current, gpu_total_gib=gpu_total_gib)
    if not isinstance(lines, list) or sum(map(len, lines)) < PREFILTER_MIN_CHARS:
        return obs.feed(lines) + obs.finish()
    import io

    from healing.tuning.prefilter import build, scan

    data = io.BytesIO("\n".join(lines).encode("utf-8", errors="replace"))
    pf = build(obs.obs.kv_pressure_percent, MAX_LINE_CHARS * 4)
    events = obs.feed_numbered((n, raw.decode("utf-8", errors="replace")) for n, raw in scan(data, pf))
    return events + obs.finish()


def observe_text(text: str, **kwargs: Any) -> list[ObserverEvent]:
    """All events of a complete log given as one string."""
    return observe_lines(text.splitlines(), **kwargs)


def observe_file(path: str | Path, **kwargs: Any) -> list[ObserverEvent]:
    """All events of a log file; garbage and binary content never crash. Unreadable → InputError.

    Only a regular file is read: a FIFO, device or socket is refused at once (it could block or never end).
    The file is read in large chunks through the prefilter (healing/tuning/prefilter.py): only the
    lines around what a failure or a start of the service prints reach the per-line machinery.
    """
    from healing.safeio import open_regular
    from healing.tuning.prefilter import build, scan

    p = Path(path)
    if not os.path.exists(p):  # also a name that cannot exist (too long)
        raise InputError(f"log file not found: {p}")
    obs = Observer(kwargs.get("settings"), current=kwargs.get("current"), gpu_total_gib=kwargs.get("gpu_total_gib"))
    pf = build(obs.obs.kv_pressure_percent, MAX_LINE_CHARS * 4)
    with open_regular(p, what="a log file") as fh:
        events = obs.feed_numbered((n, raw.decode("utf-8", errors="replace")) for n, raw in scan(fh, pf))
    return events + obs.finish()


def parse_current(pairs: Iterable[str]) -> dict[str, Decimal]:
    """``["vllm.gpu_memory_utilization=0.8", "max_num_seqs=8"]`` → dotted names; ValueError with a reason."""
    out: dict[str, Decimal] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"expected PARAM=VALUE, got {pair!r}")
        try:
            key = canonical_param(name)
        except KeyError:
            raise ValueError(f"unknown parameter {name.strip()!r} (known: {GMU}, {MAX_NUM_SEQS}, {MAX_MODEL_LEN})") from None
        try:
            d = to_decimal(value)
        except (InvalidOperation, ValueError):
            raise ValueError(f"{key} must be a number, got {value.strip()!r}") from None
        if not d.is_finite() or d <= 0:
            raise ValueError(f"{key} must be a positive number, got {value.strip()!r}")
        if key != GMU and d != d.to_integral_value():
            raise ValueError(f"{key} must be an integer, got {value.strip()!r}")
        out[key] = d
    return out


# --------------------------------------------------------------------------- cooldown

class Cooldown:
    """Per (subsystem, class) cooldown so that one failure loop does not flood intents.

    ``allow(subsystem, cls)`` answers True and starts the cooldown, or False while it runs. The clock
    is injectable (``time.monotonic`` by default) so tests need no sleeping. Thread-safe.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds < 0:
            raise ValueError("cooldown seconds must be ≥ 0")
        self.seconds = seconds
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def remaining(self, subsystem: str, event_class: str) -> float:
        """Seconds until the key may fire again (0 when it may now)."""
        with self._lock:
            last = self._last.get((subsystem, event_class))
            if last is None:
                return 0.0
            return max(0.0, last + self.seconds - self._clock())

    def allow(self, subsystem: str, event_class: str) -> bool:
        """True (and record the time) when no cooldown runs for this key, else False."""
        with self._lock:
            now = self._clock()
            last = self._last.get((subsystem, event_class))
            if last is not None and now - last < self.seconds:
                return False
            self._last[(subsystem, event_class)] = now
            return True

    def reset(self, subsystem: str | None = None, event_class: str | None = None) -> None:
        """Forget one key, or every key of a subsystem, or everything."""
        with self._lock:
            for key in list(self._last):
                if (subsystem is None or key[0] == subsystem) and (event_class is None or key[1] == event_class):
                    del self._last[key]
