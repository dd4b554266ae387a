"""Code run in child processes (spawn) by the concurrency tests.

``run_in_processes`` starts every child first and releases them together with one Event, so the
children really contend for the database instead of running one after another as they start up.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any


def append_events(url: str, writer: str, count: int) -> int:
    """Append ``count`` audit events, each in its own short write transaction."""
    from storage.audit import append_event
    from storage.engine import session_scope

    for i in range(count):
        with session_scope(url) as session:
            append_event(session, "test.append", writer, {"i": i, "writer": writer}, writer)
    return count


def write_checks_for(url: str, seconds: float) -> int:
    """Record checks for ``seconds``; returns how many were committed."""
    from storage import queries
    from storage.engine import session_scope

    written = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with session_scope(url) as session:
            queries.record_check(session, {"image_path": "/img/w.rts.png", "status": "healthy", "confidence": 1.0,
                                           "metrics": {"n": written}, "findings": []})
        written += 1
    return written


def claim(url: str, now_iso: str, max_runs: int, cooldown_s: float) -> int | None:
    """One claimer: try to take a run slot for subsystem 'vllm' at a fixed instant."""
    from storage.engine import session_scope
    from storage.ratelimit import RateLimits, claim_run_slot

    with session_scope(url) as session:
        result = claim_run_slot(session, "vllm", RateLimits(max_runs=max_runs, cooldown_s=cooldown_s),
                                datetime.fromisoformat(now_iso))
    return result.run_id


def _child(fn: Callable[..., Any], args: tuple[Any, ...], go: Any, ready: Any, results: Any, index: int) -> None:
    import storage.audit  # noqa: F401  (import the heavy modules before the start line)

    ready.put(index)
    go.wait(60)
    try:
        results.put((index, "ok", fn(*args)))
    except BaseException as exc:  # report, do not hang the parent
        results.put((index, "error", f"{type(exc).__name__}: {exc}"))


def run_in_processes(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]], timeout: float = 120) -> list[Any]:
    """Run each (function, args) in its own spawned process, all released at once; results in order."""
    ctx = multiprocessing.get_context("spawn")
    go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(fn, args, go, ready, results, i)) for i, (fn, args) in enumerate(calls)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=timeout)
    go.set()
    collected: dict[int, Any] = {}
    errors: list[str] = []
    for _ in procs:
        index, kind, value = results.get(timeout=timeout)
        if kind == "error":
            errors.append(f"child {index}: {value}")
        collected[index] = value
    for p in procs:
        p.join(timeout)
    if errors:
        raise AssertionError("; ".join(errors))
    return [collected[i] for i in range(len(calls))]
