"""The tuning job the worker schedules (registered through healing.worker.JOB_HOOKS).

One run of the job observes the configured log sources, expires overdue promotions and processes
pending intents (healing.tuning.runner.process_pending_intents), every ``tuning.interval_s`` seconds
(default 60). Claims are transactional and log sources are locked, so a "tune" run-request handled
at the same moment is safe.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from healing.config import Settings

log = logging.getLogger("selfheal.worker.tuning")
TUNING_JOB = "tuning"


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


def register_jobs(scheduler: Any, settings: Settings, job_options: dict[str, Any]) -> None:
    """Add the periodic tuning job to the worker's scheduler."""
    from healing.tuning.runner_config import parse_runner_settings

    tuning = parse_runner_settings(settings.section("tuning"))
    scheduler.add_job(_run, "interval", args=[settings], seconds=tuning.interval_s, id=TUNING_JOB,
                      next_run_time=datetime.now(UTC), **job_options)
