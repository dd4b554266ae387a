from apscheduler.schedulers.background import BackgroundScheduler

from healing.config import load_settings
from healing.tuning import worker_jobs
from healing.worker import JOB_HOOKS


def test_worker_schedules_the_tuning_cycle(tmp_path):
    assert "healing.tuning.worker_jobs:register_jobs" in JOB_HOOKS
    config = tmp_path / "c.yaml"
    config.write_text("tuning:\n  interval_s: 45\n")
    scheduler = BackgroundScheduler()
    worker_jobs.register_jobs(scheduler, load_settings(config), {"coalesce": True, "max_instances": 1,
                                                                 "misfire_grace_time": 600, "replace_existing": True})
    job = scheduler.get_job("tuning")
    assert job is not None and job.trigger.interval.total_seconds() == 45.0
    assert job.coalesce is True and job.max_instances == 1


def test_tuning_cycle_runs_against_an_empty_database(tmp_path, monkeypatch, caplog):
    from storage.migrate import upgrade

    upgrade()
    calls = []
    monkeypatch.setattr("healing.worker.run_tuning_hook", lambda settings: (calls.append(settings) or (True, {"intents": 0})))
    worker_jobs._run(load_settings())
    assert len(calls) == 1


def test_worker_schedules_the_watch_job_at_its_own_interval(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("tuning:\n  interval_s: 45\n  watch: {poll_s: 2.5}\n")
    scheduler = BackgroundScheduler()
    worker_jobs.register_jobs(scheduler, load_settings(config), {"coalesce": True, "max_instances": 1,
                                                                 "misfire_grace_time": 600, "replace_existing": True})
    job = scheduler.get_job("tuning-watch")
    assert job is not None and job.trigger.interval.total_seconds() == 2.5
    assert job.coalesce is True and job.max_instances == 1
    assert scheduler.get_job("tuning").trigger.interval.total_seconds() == 45.0
