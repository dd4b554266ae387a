"""The tuning jobs the worker schedules (registered through healing.worker.JOB_HOOKS).

``tuning``: one run observes the configured log sources, expires overdue promotions and processes
pending intents (healing.tuning.runner.process_pending_intents), every ``tuning.interval_s`` seconds
(default 60). Claims are transactional and log sources are locked, so a "tune" run-request handled
at the same moment is safe.

``tuning-watch``: one short pass over the post-promotion watches (healing.tuning.watch.check_watches)
every ``tuning.watch.poll_s`` seconds (default 5), so a 600 s verification window never blocks the
worker and a failing service is rolled back within a few polls.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from healing.config import Settings

log = logging.getLogger("selfheal.worker.tuning")
TUNING_JOB = "tuning"
WATCH_JOB = "tuning-watch"


def _run(settings: Settings) -> None:
    from healing.errors import SelfHealError
    from healing.worker import run_tuning_hook

    try:
        ok, result = run_tuning_hook(settings)
    except SelfHealError as exc:  # a bad log source or a locked database must not stop the scheduler
        log.warning("tuning cycle failed: %s", exc)
        return
    if not ok:
        log.warning("tuning cycle skipped: %s", result.get("error"))


def _watch(settings: Settings) -> None:
    from healing.errors import SelfHealError
    from healing.tuning.watch import check_watches

    try:
        for result in check_watches(settings):
            if result["state"] != "watching":
                log.info("promotion %s %s: %s", result["promotion_id"], result["state"], result["reason"])
    except SelfHealError as exc:  # a locked database must not stop the scheduler
        log.warning("watch pass failed: %s", exc)


def register_jobs(scheduler: Any, settings: Settings, job_options: dict[str, Any]) -> None:
    """Add the periodic tuning job and the post-promotion watch job to the worker's scheduler."""
    from healing.tuning.runner_config import parse_runner_settings

    tuning = parse_runner_settings(settings.section("tuning"))
    scheduler.add_job(_run, "interval", args=[settings], seconds=tuning.interval_s, id=TUNING_JOB,
                      next_run_time=datetime.now(UTC), **job_options)
    scheduler.add_job(_watch, "interval", args=[settings], seconds=tuning.watch.poll_s, id=WATCH_JOB,
                      next_run_time=datetime.now(UTC), **job_options)
