"""Tuning benchmark: issue 12's scenarios through the whole loop, restarts and time to heal.

Each scenario of tests/tuning/test_issue12_scenarios.py is run REPEATS times with real processes: the vLLM
0.33 simulator as the production service (started from its `--config` file by a restart script) fails,
`selfheal tune run --json` plans, pre-flights and canaries candidates (the simulator again) and applies
the winner in dev mode (the reload command restarts production), `selfheal tune watch --wait --json`
verifies the service for the window or rolls it back.

Per scenario: the outcome, the candidates (planned / rejected by pre-flight / started in a canary), the
service starts until healed (canary starts, baseline included, + production reloads) and the times from
the failure appearing in the production log to: `tune run` returning (decided, applied and reloaded), the
healed config answering /health 200 (time to heal), the watch ending (verified: includes the window).
For the rollback scenario, from the promoted config's engine dying in the log to the rollback done.

Every start is simulated: the simulator "starts" in STARTUP_S (0.2 s) where a real vLLM takes 30–600 s
(weights, profiling, CUDA graphs), and the watch window is VERIFY_WINDOW_S (4 s) instead of the default
600 s. The estimate rows replace each simulated start by a real one: time to heal + restarts × (T − 0.2 s).

SELFHEAL_BENCH_QUICK=1 runs each scenario once instead of three times.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tuning.test_issue12_scenarios import (  # noqa: E402
    SCENARIOS,
    STARTUP_S,
    VERIFY_WINDOW_S,
    ScenarioResult,
    run_scenario,
)

REPEATS = 3
REAL_START_S = (30.0, 120.0, 600.0)  # a small model, a 7B-class model, vLLM's engine-ready timeout


def _outcome(r: ScenarioResult) -> str:
    o = r.outcome
    if o["decision"] != "applied":
        return f"{o['outcome'].lower()} ({o['decision']})"
    params = ", ".join(f"{k.removeprefix('vllm.')}={v}" for c in o["candidates"] if c.get("verdict") == "pass"
                       for k, v in c["params"].items())
    return f"{r.watch_state}: {params}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> list[tuple[str, float, float | None]]:
    quick = os.environ.get("SELFHEAL_BENCH_QUICK") == "1"
    repeats = 1 if quick else REPEATS
    print(f"== tuning loop: issue 12's scenarios × {repeats}, vLLM 0.33 simulator, simulated start {STARTUP_S:g} s, "
          f"watch window {VERIFY_WINDOW_S:g} s" + (" (SELFHEAL_BENCH_QUICK=1)" if quick else "") + " ==")
    results: dict[str, list[ScenarioResult]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as name:
        for scenario in SCENARIOS.values():
            for i in range(repeats):
                results.setdefault(scenario.name, []).append(run_scenario(scenario, Path(name) / f"{scenario.name}-{i}"))
    print(f"{'scenario':<12} {'outcome':<58} {'cand':>4} {'rej':>3} {'can':>3} {'rel':>3} {'starts':>6} "
          f"{'decided':>7} {'healthy':>7} {'settled':>7}")
    healed_restarts: list[float] = []
    healed_times: list[float] = []
    verified_times: list[float] = []
    rollback_times: list[float] = []
    for scenario_name, runs in results.items():
        for r in runs:
            cands = r.outcome["candidates"]
            print(f"{scenario_name:<12} {_outcome(r):<58} {len(cands):>4} {sum(not c['preflight_ok'] for c in cands):>3} "
                  f"{r.canary_starts:>3} {r.production_reloads:>3} {r.restarts:>6} {r.decided_after_s:>7.1f} "
                  f"{_fmt(r.healthy_after_s):>7} {_fmt(r.settled_after_s):>7}")
            if r.watch_state == "verified" and r.healthy_after_s is not None and r.settled_after_s is not None:
                healed_restarts.append(r.restarts)
                healed_times.append(r.healthy_after_s)
                verified_times.append(r.settled_after_s)
            if r.died_to_rollback_s is not None:
                rollback_times.append(r.died_to_rollback_s)
    print(f"{'median':<12} {'':<58} {'':>4} {'':>3} {'':>3} {'':>3} {'starts':>6} {'decided':>7} {'healthy':>7} {'settled':>7}")
    for scenario_name, runs in results.items():
        healthy = [r.healthy_after_s for r in runs if r.healthy_after_s is not None]
        settled = [r.settled_after_s for r in runs if r.settled_after_s is not None]
        print(f"{scenario_name:<12} {_outcome(runs[0]):<58} {'':>4} {'':>3} {'':>3} {'':>3} "
              f"{_median([r.restarts for r in runs]):>6g} {_median([r.decided_after_s for r in runs]):>7.1f} "
              f"{_fmt(_median(healthy) if healthy else None):>7} {_fmt(_median(settled) if settled else None):>7}")
    print("cand: candidates planned; rej: rejected by pre-flight (never started); can: canary starts (baseline included); "
          "rel: production reloads; starts = can + rel; times in s from the failure line in the production log")
    restarts, heal, verified = _median(healed_restarts), _median(healed_times), _median(verified_times)
    print(f"healed failures: {len(healed_times)}; median starts per healed failure {restarts:g}; median time to heal "
          f"{heal:.1f} s (healthy), {verified:.1f} s (verified, window {VERIFY_WINDOW_S:g} s)")
    if rollback_times:
        print(f"rollback: median {_median(rollback_times):.1f} s from the engine's death in the log to the old file back and "
              "production reloaded")
    for real in REAL_START_S:
        estimate = _median([t + s * (real - STARTUP_S) for t, s in zip(healed_times, healed_restarts, strict=True)])
        print(f"with a real start of {real:g} s: time to heal ≈ {estimate:.0f} s (+ the watch window, 600 s by default)")
    summary: list[tuple[str, float, float | None]] = [
        ("tuning starts per healed failure (median)", restarts, None),
        ("tuning time to heal s (median, simulated)", heal, None),
        ("tuning time to verified s (median)", verified, None),
    ]
    if rollback_times:
        summary.append(("tuning time to roll back s (median)", _median(rollback_times), None))
    return summary


if __name__ == "__main__":
    for metric, value, _target in main():
        print(f"{metric:<40} {value:10.3f}")
