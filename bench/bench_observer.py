"""Observer benchmark: `selfheal tune observe FILE --json` against `grep -c` and `wc -l` on the same log.

Logs of 100 MB and 1 GB (decimal) are generated in a temporary folder: a vLLM 0.10 start-up, then
healthy serving lines (stats, spec-decode metrics, uvicorn access lines, as in the replay corpus) with
advancing timestamps, and three failures near the start, the middle and the end: a sampler warm-up
OOM, a restart whose start-up fails on free memory (a failure of that kind follows a banner, as in
real logs), and a PyTorch OOM. The lines are formatted once into a few blocks of ~4 MB which are
then written repeatedly, so generating 1 GB takes seconds.

The three commands are timed alternately in one run (min of N repeats, the file in the page cache):
`LC_ALL=C grep -c memory FILE` (one keyword of the Observer's vocabulary), `LC_ALL=C wc -l FILE` and
the real CLI process of `tune observe`. Rows: MB/s of each, observe/grep and observe/wc time ratios,
and the Observer's peak RSS. Target: observe/grep ≤ 5 on 1 GB (issue 11). A last line says whether
`tune observe` found the three failures (a prefilter that skips them would be fast for nothing).

SELFHEAL_BENCH_QUICK=1 skips the 1 GB log (and its target row).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1_000_000
SIZES = [(100 * MB, 3), (1000 * MB, 2)]  # (bytes, repeats): two 1 GB runs keep `make bench` bearable
GREP_TARGET = 5.0
BLOCKS = 8
BLOCK_LINES = 16_000  # × ~250 B ≈ 4 MB per block

STARTUP = """\
INFO {ts} [__init__.py:241] Automatically detected platform cuda.
(APIServer pid=1391815) INFO {ts} [api_server.py:1882] vLLM API server version 0.10.2
(APIServer pid=1391815) INFO {ts} [utils.py:328] non-default args: {{'model_tag': 'Qwen/Qwen2.5-7B-Instruct', 'model': 'Qwen/Qwen2.5-7B-Instruct', 'max_model_len': 8192, 'gpu_memory_utilization': 0.85}}
(APIServer pid=1391815) INFO {ts} [__init__.py:1773] Using max model len 8192
(APIServer pid=1391815) INFO {ts} [scheduler.py:222] Chunked prefill is enabled with max_num_batched_tokens=2048.
(EngineCore_0 pid=1399537) INFO {ts} [gpu_model_runner.py:2007] Model loading took 14.2488 GiB and 5.034811 seconds
(EngineCore_0 pid=1399537) INFO {ts} [gpu_worker.py:277] Available KV cache memory: 52.61 GiB
(EngineCore_0 pid=1399537) INFO {ts} [kv_cache_utils.py:849] GPU KV cache size: 985,216 tokens
(EngineCore_0 pid=1399537) INFO {ts} [kv_cache_utils.py:853] Maximum concurrency for 8,192 tokens per request: 120.27x
(EngineCore_0 pid=1399537) INFO {ts} [gpu_model_runner.py:2708] Graph capturing finished in 9 secs, took 0.52 GiB
(EngineCore_0 pid=1399537) INFO {ts} [core.py:215] init engine (profile, create kv cache, warmup model) took 31.06 seconds
(APIServer pid=1391815) INFO {ts} [loggers.py:142] Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: 61576
(APIServer pid=1391815) INFO {ts} [api_server.py:1639] Supported_tasks: ['generate']
"""
SERVING = [  # one cycle of steady-state lines; {ts} advances by one second per line
    "(APIServer pid=1391815) INFO {ts} [loggers.py:271] Engine 000: Avg prompt throughput: {a}.{b} tokens/s, Avg generation "
    "throughput: {c}.{d} tokens/s, Running: {r} reqs, Waiting: 0 reqs, GPU KV cache usage: {u}.{b}%, Prefix cache hit rate: "
    "{d}.{a}%",
    "(APIServer pid=1391815) INFO {ts} [metrics.py:101] SpecDecoding metrics: Mean acceptance length: 2.{b}0, Accepted "
    "throughput: {c}.60 tokens/s, Drafted throughput: {a}.99 tokens/s, Accepted: {c} tokens, Drafted: {a} tokens, "
    "Per-position acceptance rate: 0.615, 0.415, 0.169, Avg Draft acceptance rate: 4{b}.0%",
    '(APIServer pid=1391815) INFO:     10.0.{r}.{c}:5{a} - "POST /v1/chat/completions HTTP/1.1" 200 OK',
    '(APIServer pid=1391815) INFO:     10.0.{r}.{d}:4{b} - "GET /metrics HTTP/1.1" 200 OK',
]
FAILURES = [
    "(EngineCore_0 pid=1399537) ERROR {ts} [core.py:708] RuntimeError: CUDA out of memory occurred when warming up sampler "
    "with 256 dummy requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` when initializing the engine.",
    STARTUP.split("(EngineCore_0", 1)[0]  # the restart's banner and arguments, then the failure
    + "(EngineCore_0 pid=1399537) ERROR {ts} [core.py:708] ValueError: Free memory on device (67.24/79.25 GiB) on startup is "
    "less than desired GPU memory utilization (0.9, 71.33 GiB). Decrease GPU memory utilization or reduce GPU memory used "
    "by other processes.",
    "(Worker_TP0 pid=160) ERROR {ts} [multiproc_executor.py:962] torch.OutOfMemoryError: CUDA out of memory. Tried to "
    "allocate 136.00 MiB. GPU 0 has a total capacity of 23.56 GiB of which 117.38 MiB is free. Including non-PyTorch "
    "memory, this process has 22.82 GiB memory in use. Of the allocated memory 21.98 GiB is allocated by PyTorch, and "
    "391.42 MiB is reserved by PyTorch but unallocated.",
]


EXPECTED_EVENTS = ["sampler_warmup_oom", "startup_free_memory_below_request", "cuda_oom_torch"]


def _stamp(second: int) -> str:
    """vLLM's `MM-DD HH:MM:SS` for ``second`` seconds after 12-01 00:00:00 (days wrap inside the month)."""
    day, rest = divmod(second, 86_400)
    return f"12-{day % 28 + 1:02d} {rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"


def _blocks() -> list[bytes]:
    """BLOCKS byte blocks of serving lines with consecutive timestamps and varying numbers."""
    blocks = []
    for b in range(BLOCKS):
        lines = []
        for i in range(BLOCK_LINES):
            n = b * BLOCK_LINES + i
            template = SERVING[n % len(SERVING)]
            lines.append(template.format(ts=_stamp(60 + n), a=n % 997, b=n % 10, c=n % 89, d=n % 7, r=n % 16, u=n % 40))
        blocks.append(("\n".join(lines) + "\n").encode())
    return blocks


def generate_log(path: Path, size: int) -> None:
    """Write a log of about ``size`` bytes: start-up, serving blocks, failures at 10 %, 50 % and the end."""
    blocks = _blocks()
    fail_at = {size // 10: 0, size // 2: 1}
    written = 0
    with open(path, "wb") as out:
        written += out.write(STARTUP.format(ts=_stamp(0)).encode())
        k = 0
        while written < size:
            ts = _stamp(60 + k % BLOCKS * BLOCK_LINES)  # the time where the next block starts
            for mark in [m for m in fail_at if written >= m]:
                written += out.write((FAILURES[fail_at.pop(mark)].format(ts=ts) + "\n").encode())
            written += out.write(blocks[k % BLOCKS])
            k += 1
        out.write((FAILURES[2].format(ts=_stamp(60 + k % BLOCKS * BLOCK_LINES)) + "\n").encode())


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    """Wall time of one process run to completion, and its stdout."""
    # stdout is a pipe, not /dev/null: GNU grep stops at the first match when its output is /dev/null.
    # stderr goes to a file, so a chatty child cannot block on a pipe nobody reads yet.
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        with proc.stdout:
            out = proc.stdout.read()
        _, status, _usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {err.read().decode(errors='replace').strip()[:300]}")
    return elapsed, out


# Runs a command from a small, freshly started process and prints the command's peak RSS (KiB). A child's
# ru_maxrss starts at its parent's RSS at fork (Linux records the pre-exec high-water mark), so a child of
# this bench, grown by the modules run before it in `make bench`, would report the bench's size, not its own.
_RSS_LAUNCHER = ("import resource, subprocess, sys; "
                 "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _peak_rss_kib(argv: list[str], env: dict[str, str]) -> int:
    """Peak RSS in KiB of one untimed run of ``argv``, started from a small launcher process."""
    out = subprocess.run([sys.executable, "-S", "-c", _RSS_LAUNCHER, *argv], env=env, capture_output=True,
                         check=True).stdout
    return int(out.split()[-1])


def _bench_size(folder: Path, size: int, repeats: int) -> list[tuple[str, float, float | None]]:
    label = f"{size // MB} MB" if size < 1000 * MB else f"{size // (1000 * MB)} GB"
    path = folder / f"vllm-{size // MB}MB.log"
    start = time.perf_counter()
    generate_log(path, size)
    actual = path.stat().st_size
    print(f"-- {label} log: {actual / MB:.1f} MB generated in {time.perf_counter() - start:.1f} s")
    env = dict(os.environ, PYTHONPATH=str(ROOT), LC_ALL="C")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    commands: dict[str, list[str]] = {
        "grep": ["grep", "-c", "memory", str(path)],
        "wc": ["wc", "-l", str(path)],
        "observe": [sys.executable, "-m", "healing", "tune", "observe", str(path), "--json"],
    }
    _timed(commands["wc"], env)  # the file into the page cache for all three
    best = {name: float("inf") for name in commands}
    events: list[str] = []
    for _ in range(repeats):  # alternate, so all three see the same machine load
        for name, argv in commands.items():
            elapsed, out = _timed(argv, env)
            best[name] = min(best[name], elapsed)
            if name == "observe":
                events = [e["class"] for e in json.loads(out)]
    peak_kib = _peak_rss_kib(commands["observe"], env)
    for name in commands:
        print(f"{name:<8} {best[name]:8.3f} s  {actual / MB / best[name]:9.1f} MB/s")
    ratio_grep, ratio_wc = best["observe"] / best["grep"], best["observe"] / best["wc"]
    print(f"observe/grep {ratio_grep:.1f}×, observe/wc {ratio_wc:.1f}×, observe peak RSS {peak_kib / 1024:.0f} MiB")
    # a speed-up that drops failures is no speed-up: say so next to the figures
    verdict = "all found" if events == EXPECTED_EVENTS else f"EXPECTED {', '.join(EXPECTED_EVENTS)}"
    print(f"observe events: {', '.join(events) or 'none'} ({verdict})")
    path.unlink()
    return [
        (f"observer {label} observe MB/s", actual / MB / best["observe"], None),
        (f"observer {label} grep -c MB/s", actual / MB / best["grep"], None),
        (f"observer {label} wc -l MB/s", actual / MB / best["wc"], None),
        (f"observer {label} observe/grep", ratio_grep, GREP_TARGET if size >= 1000 * MB else None),
        (f"observer {label} observe/wc", ratio_wc, None),
        (f"observer {label} peak RSS (MiB)", peak_kib / 1024, None),
    ]


def main() -> list[tuple[str, float, float | None]]:
    quick = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
    sizes = SIZES[:1] if quick else SIZES
    print("== vLLM Observer: tune observe vs grep -c / wc -l" + (" (SELFHEAL_BENCH_QUICK=1: 100 MB only)" if quick else "") + " ==")
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-observer-") as tmp:
        for size, repeats in sizes:
            rows.extend(_bench_size(Path(tmp), size, repeats))
    return rows


if __name__ == "__main__":
    main()
