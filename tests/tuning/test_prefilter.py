"""The prefilter's two matchers (Hyperscan and the pure-Python fallback) and its newline count agree exactly.

healing/tuning/prefilter.py decides the matcher in one place (``_hit_finder``): Hyperscan when it
imports, else ``bytes.find`` + ``re``. Here the fallback is forced by hiding the module, and both must
give the same hit offsets, the same (line number, text) stream and the same Observer events.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

import healing.tuning.prefilter as prefilter
from healing.tuning.observer import observe_file, observe_lines
from healing.tuning.prefilter import build, scan

REPLAY = Path(__file__).parent / "replay"
STEADY = ("(APIServer pid=1) INFO 05-19 10:00:00 [loggers.py:271] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg "
          "generation throughput: 1.0 tokens/s, Running: 4 reqs, Waiting: 0 reqs, GPU KV cache usage: {u}%, Prefix cache hit rate: 0.0%")
BANNER = "(APIServer pid=1) INFO 05-19 10:00:00 [utils.py:328] non-default args: {'model': 'Qwen/Qwen3-8B'}"
OOM = ("(EngineCore_DP0 pid=2) ERROR 05-19 10:00:01 [core.py:1] torch.OutOfMemoryError: CUDA out of memory. Tried to "
       "allocate 2.00 GiB. GPU 0 has a total capacity of 23.56 GiB of which 117.38 MiB is free.")

needs_hyperscan = pytest.mark.skipif(prefilter._hyperscan is None, reason="hyperscan not installed")


@pytest.fixture(params=["native", "python"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the matcher the platform gives and with the fallback (hyperscan hidden)."""
    if request.param == "python":
        monkeypatch.setattr(prefilter, "_hyperscan", None)
        monkeypatch.setattr(prefilter, "_np", None)
        return "python"
    if prefilter._hyperscan is None:
        pytest.skip("hyperscan not installed")
    return "hyperscan"


def _log_lines() -> list[str]:
    lines = [BANNER] + [STEADY.format(u="50.0")] * 900
    lines += [STEADY.format(u="97.5"), OOM, OOM + " out of memory", "x" * 9000]  # pattern, anchor twice on one line
    lines += [STEADY.format(u="12.0")] * 700 + ["Preemptions: 0, Preemptions: 3, Preemptions: 4"] * 2
    lines += [STEADY.format(u="100.0")] + [STEADY.format(u="9.9")] * 300 + [BANNER] + [STEADY.format(u="1.0")] * 800
    return lines


def test_build_reports_the_engine_it_decided(engine: str) -> None:
    assert build(Decimal(95), 32768).engine == engine


@needs_hyperscan
def test_both_matchers_give_the_same_sorted_unique_hit_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(("\n".join(_log_lines()) + "\n").encode())
    native = build(Decimal(95), 32768)
    monkeypatch.setattr(prefilter, "_hyperscan", None)
    fallback = build(Decimal(95), 32768)
    hits = native.find_hits(data, len(data))
    assert hits == fallback.find_hits(data, len(data))
    assert hits == sorted(set(hits))
    kinds = [bytes(data[h:h + 16]) for h in hits]
    assert kinds.count(b"non-default args") == 2
    assert kinds.count(b"KV cache usage: ") == 2  # 97.5 and 100.0, not 50.0 / 12.0 / 9.9 / 1.0
    assert sum(k.startswith(b"out of memory") for k in kinds) == 3  # two lines, one of them twice
    assert sum(k.startswith(b", Preemptions: ") for k in kinds) == 4
    # only a match that ends inside the size limit
    whole = hits[0] + len(b"non-default args: {")
    assert native.find_hits(data, whole) == fallback.find_hits(data, whole) == [hits[0]]
    assert native.find_hits(data, whole - 1) == fallback.find_hits(data, whole - 1) == []


@pytest.mark.parametrize("chunk", [prefilter.CHUNK_BYTES, 7000, 777])
def test_scan_stream_is_the_same_for_both_matchers(chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native side also counts newlines with numpy (forced for this small file), the fallback with bytes.count."""
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(_log_lines()) + "\n", encoding="utf-8")
    monkeypatch.setattr(prefilter, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(prefilter, "NUMPY_FROM_BYTES", 0)
    streams = []
    for hide in (False, True):
        if hide:
            monkeypatch.setattr(prefilter, "_hyperscan", None)
            monkeypatch.setattr(prefilter, "_np", None)
        with log.open("rb") as fh:
            streams.append(list(scan(fh, build(Decimal(95), 8192))))
    assert streams[0] == streams[1]
    numbers = [n for n, _ in streams[0]]
    assert numbers[:601] == list(range(1, 602))  # the start of the service
    assert 904 in numbers and 903 in numbers and 902 in numbers  # the OOM lines and the KV ≥ 95 % line
    assert numbers == sorted(set(numbers))
    lines = _log_lines()
    assert all(lines[n - 1].encode()[:8192] == text for n, text in streams[0])  # exact numbers, overlong line cut


def test_observe_file_equals_the_full_read(engine: str, tmp_path: Path) -> None:
    lines = _log_lines()
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    full = [e.to_json() for e in observe_lines(lines, current={"vllm.gpu_memory_utilization": 0.8})]
    got = [e.to_json() for e in observe_file(log, current={"vllm.gpu_memory_utilization": 0.8})]
    assert got == full and full


@needs_hyperscan
def test_the_replay_corpus_gives_the_same_events_with_both_matchers(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = sorted(p.name[: -len(".log")] for p in REPLAY.glob("*.log"))
    assert len(cases) >= 40

    def run() -> list[list[dict[str, object]]]:
        out = []
        for name in cases:
            label = json.loads((REPLAY / f"{name}.expected.json").read_text(encoding="utf-8"))
            out.append([e.to_json() for e in observe_file(REPLAY / f"{name}.log", current=label.get("current"))])
        return out

    native = run()
    monkeypatch.setattr(prefilter, "_hyperscan", None)
    monkeypatch.setattr(prefilter, "_np", None)
    assert run() == native


@pytest.mark.parametrize("size", [0, 1, 100, 5000, (1 << 20) - 1, 1 << 20, (3 << 20) + 12345])
def test_newline_count_is_exact_with_numpy_and_bytes_count(size: int) -> None:
    if prefilter._numpy() is None:
        pytest.skip("numpy not installed")
    buf = bytearray((b"ab\ncd\n\n" * (size // 7 + 1))[:size])
    for start, end in [(0, size), (size // 3, size), (min(1, size), max(min(1, size), size - 1))]:
        expected = bytes(buf[start:end]).count(b"\n")
        assert prefilter._count_numpy(buf, start, end) == prefilter._count_bytes(buf, start, end) == expected


def test_numpy_counts_only_in_a_big_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.log"
    with big.open("wb") as fh:
        fh.truncate(prefilter.NUMPY_FROM_BYTES)  # sparse: only its size matters
    with big.open("rb") as fh:
        assert prefilter._newline_counter(fh) is (prefilter._count_numpy if prefilter._numpy() else prefilter._count_bytes)
        fh.seek(1)  # less than NUMPY_FROM_BYTES left to read
        assert prefilter._newline_counter(fh) is prefilter._count_bytes
    assert prefilter._newline_counter(io.BytesIO(b"a\n" * 10)) is prefilter._count_bytes
    monkeypatch.setattr(prefilter, "_np", None)  # numpy absent
    with big.open("rb") as fh:
        assert prefilter._newline_counter(fh) is prefilter._count_bytes


@needs_hyperscan
def test_a_pattern_hyperscan_cannot_compile_falls_back_to_python() -> None:
    engine, find_hits = prefilter._hit_finder((b"out of memory",), (rb"(x)\1 twice",))  # a back-reference
    data = bytearray(b"ok\nxx twice\nCUDA out of memory\n")
    assert engine == "python"
    assert find_hits(data, len(data)) == [3, 17]
    assert prefilter._hit_finder((b"out of memory",), (rb"KV cache usage: (?:100|99)\.",))[0] == "hyperscan"
