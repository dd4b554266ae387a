"""The post-promotion watch against a real HTTP service on 127.0.0.1 that the test controls: verified,
rolled back on 503, on a CUDA OOM in the log, on a metric regression; the reload command really runs."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from healing.config import Settings
from healing.tuning.actuators import GMU
from healing.tuning.promotions import approve_promotion
from healing.tuning.watch import check_watches, parse_metrics
from storage import tuning_queries as tq
from storage.engine import dispose_engines, session_scope
from storage.models import Alert, AuditEvent, PromotionWatch
from tests.tuning._orchestration import configure, db_url  # noqa: F401 - fixture

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TARGET = "# vLLM --config (ops)\nmodel: demo\ngpu-memory-utilization: 0.8   # tuned\nmax-model-len: 4096\n"
OOM = ("(EngineCore_DP0 pid=4242) ERROR 05-01 12:00:20 [core.py:866] torch.OutOfMemoryError: CUDA out of memory. "
       "Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.68 GiB of which 6.25 MiB is free. Including "
       "non-PyTorch memory, this process has 23.66 GiB memory in use. Of the allocated memory 22.90 GiB is allocated by "
       "PyTorch, and 212.76 MiB is reserved by PyTorch but unallocated.\n")


class Service:
    """A tiny stand-in for vLLM's API server: /health answers ``health``; /metrics serves the numbers."""

    def __init__(self) -> None:
        self.health = 200
        self.waiting = 2.0
        self.preemptions = 0.0
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                service.requests.append(self.path)
                if self.path == "/health":
                    self.send_response(service.health)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = (f'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name="demo"}} {service.waiting}\n'
                        f'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name="demo"}} 4.0\n'
                        f'# TYPE vllm:num_preemptions counter\nvllm:num_preemptions_total{{model_name="demo"}} {service.preemptions}\n'
                        ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.close()


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: Service, **watch: Any) -> tuple[Settings, Path, Path, Path]:
    target = tmp_path / "vllm.yaml"
    target.write_text(TARGET)
    log = tmp_path / "vllm.log"
    log.write_text("INFO 05-01 11:00:00 [api_server.py:1] Starting vLLM server on http://0.0.0.0:8000\n")
    marker = tmp_path / "reloads.txt"
    # the reload command: appends what the service would now read, one line per reload
    reload = [sys.executable, "-c", "import pathlib, sys; t = pathlib.Path(sys.argv[1]).read_text(); "
              "open(sys.argv[2], 'a').write(repr(t) + '\\n')", str(target), str(marker)]
    settings = configure(tmp_path, monkeypatch, {
        "target_config": str(target), "reload_command": reload, "verify_window_s": 60,
        "log_sources": [{"path": str(log), "subsystem": "vllm"}],
        "watch": {"health_url": f"{service.url}/health", "metrics_url": f"{service.url}/metrics", "unhealthy_probes": 2,
                  "regression_polls": 2, "probe_timeout_s": 2, **watch},
    })
    return settings, target, log, marker


def _apply(settings: Settings, now: datetime = T0) -> int:
    with session_scope() as session:
        promo = tq.create_promotion(session, run_id=None, candidate_id=None, subsystem="vllm", old_values={GMU: 0.8},
                                    new_values={GMU: 0.9}, status="pending_review", reason="canary passed",
                                    expires_at=now + timedelta(hours=1), target_file=str(settings.section("tuning")["target_config"]),
                                    now=now)
    applied = approve_promotion(None, int(promo["id"]), "alice", settings=settings, now=now)
    assert applied["status"] == "applied"
    return int(promo["id"])


def _kinds(prefix: str = "promotion.") -> list[str]:
    from sqlmodel import select

    with session_scope(write=False) as session:
        return [e.kind for e in session.exec(select(AuditEvent).order_by(AuditEvent.seq)) if e.kind.startswith(prefix)]


def _payload(kind: str) -> dict[str, Any]:
    from sqlmodel import select

    with session_scope(write=False) as session:
        [event] = list(session.exec(select(AuditEvent).where(AuditEvent.kind == kind)))
        return json.loads(event.payload)


def _promotion(pid: int) -> dict[str, Any]:
    with session_scope(write=False) as session:
        return next(p for p in tq.list_promotions_detail(session) if p["id"] == pid)


def _alerts() -> list[dict[str, Any]]:
    from sqlmodel import select

    with session_scope(write=False) as session:
        return [a.model_dump() for a in session.exec(select(Alert).order_by(Alert.id))]


def _watch(pid: int) -> dict[str, Any]:
    with session_scope(write=False) as session:
        row = session.get(PromotionWatch, pid)
        assert row is not None
        return row.model_dump()


APPLIED = TARGET.replace("0.8   #", "0.9   #")


def test_a_healthy_service_is_verified_after_the_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                         service: Service) -> None:
    settings, target, _log, marker = _setup(tmp_path, monkeypatch, service)
    pid = _apply(settings)
    assert target.read_text() == APPLIED
    watch = _watch(pid)
    assert (watch["state"], watch["until"], watch["baseline"]["metrics"]) == (
        "watching", T0 + timedelta(seconds=60), {"waiting": 2.0, "running": 4.0, "preemptions": 0.0})

    assert [r["state"] for r in check_watches(settings, T0 + timedelta(seconds=10))] == ["watching"]
    assert [r["state"] for r in check_watches(settings, T0 + timedelta(seconds=59))] == ["watching"]
    [result] = check_watches(settings, T0 + timedelta(seconds=60))

    assert (result["state"], result["reason"]) == ("verified", "verified: 60 s after the apply without a failure (3 health probes)")
    assert _watch(pid)["state"] == "verified" and _promotion(pid)["status"] == "applied"
    assert _promotion(pid)["watch"] == {"state": "verified", "until": T0 + timedelta(seconds=60), "reason": result["reason"]}
    assert check_watches(settings, T0 + timedelta(seconds=65)) == []  # nothing left to watch
    assert target.read_text() == APPLIED and marker.read_text() == repr(APPLIED) + "\n"  # one reload: the apply
    assert _kinds() == ["promotion.created", "promotion.approved", "promotion.applied", "promotion.watch_started",
                        "promotion.watch_verified"]
    assert _alerts() == []
    assert service.requests.count("/health") == 3 and service.requests.count("/metrics") == 4  # baseline + 3 polls


def test_a_503_rolls_back_restores_the_bytes_and_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                         service: Service) -> None:
    settings, target, _log, marker = _setup(tmp_path, monkeypatch, service)
    pid = _apply(settings)
    assert check_watches(settings, T0 + timedelta(seconds=5))[0]["state"] == "watching"
    service.health = 503
    assert check_watches(settings, T0 + timedelta(seconds=10))[0]["state"] == "watching"  # 1 of 2 failed probes
    [result] = check_watches(settings, T0 + timedelta(seconds=15))

    reason = f"{service.url}/health unhealthy on 2 consecutive probes (last: HTTP 503)"
    assert (result["state"], result["reason"]) == ("rolled_back", reason)
    assert target.read_bytes() == TARGET.encode()  # the backup's bytes, comments and all
    assert marker.read_text() == repr(APPLIED) + "\n" + repr(TARGET) + "\n"  # reloaded after the restore
    promo = _promotion(pid)
    assert (promo["status"], promo["reason"]) == ("rolled_back", f"watch failed: {reason}")
    assert _watch(pid)["state"] == "rolled_back"
    [alert] = _alerts()
    assert (alert["kind"], alert["severity"], alert["subject"], alert["reason"], alert["id"]) == (
        "tuning_rollback", "critical", f"vllm: promotion {pid}", "watch_failed", result["alert_id"])
    assert alert["message"] == f"promotion {pid} (gpu_memory_utilization=0.9) rolled back: watch failed: {reason}"
    assert _kinds() == ["promotion.created", "promotion.approved", "promotion.applied", "promotion.watch_started",
                        "promotion.watch_failed", "promotion.file_restored", "promotion.reload", "promotion.rolled_back",
                        "promotion.watch_rolled_back"]
    restored = _payload("promotion.file_restored")
    assert (restored["backup_path"], restored["removed"]) == (promo["backup_path"], False)
    import hashlib

    assert (restored["sha256_before"], restored["sha256_restored"]) == (
        hashlib.sha256(APPLIED.encode()).hexdigest(), hashlib.sha256(TARGET.encode()).hexdigest())
    assert _payload("promotion.reload")["ok"] is True
    assert _payload("promotion.rolled_back")["automatic"] is True


def test_a_cuda_oom_in_the_log_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                          service: Service) -> None:
    settings, target, log, marker = _setup(tmp_path, monkeypatch, service)
    with log.open("a") as fh:  # an old failure, before the apply: not the new config's fault
        fh.write(OOM)
    pid = _apply(settings)
    assert check_watches(settings, T0 + timedelta(seconds=5))[0]["state"] == "watching"
    with log.open("a") as fh:
        fh.write("INFO 05-01 12:00:10 [loggers.py:1] Engine 000: Avg prompt throughput: 1.0 tokens/s\n" + OOM)

    [result] = check_watches(settings, T0 + timedelta(seconds=20))

    assert result["state"] == "rolled_back"
    line = OOM.strip()[OOM.index("torch.OutOfMemoryError"):]
    assert result["reason"] == f"cuda_oom_torch in {log}: {line[:300]}"  # the decisive line, cut at 300 characters
    assert target.read_bytes() == TARGET.encode() and marker.read_text().endswith(repr(TARGET) + "\n")
    assert _promotion(pid)["status"] == "rolled_back"
    failed = _payload("promotion.watch_failed")
    assert [(f["class"], f["source"]) for f in failed["evidence"]["log"]] == [("cuda_oom_torch", str(log))]
    assert [a["kind"] for a in _alerts()] == ["tuning_rollback"]


def test_a_waiting_queue_far_above_the_baseline_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                           service: Service) -> None:
    settings, target, _log, _marker = _setup(tmp_path, monkeypatch, service, waiting_min=4, waiting_factor=3)
    pid = _apply(settings)  # baseline: 2 waiting
    service.waiting = 6.0  # = max(4, 2 x 3): not above the limit
    assert check_watches(settings, T0 + timedelta(seconds=5))[0]["state"] == "watching"
    service.waiting = 7.0
    assert check_watches(settings, T0 + timedelta(seconds=10))[0]["state"] == "watching"  # 1 of 2 polls
    [result] = check_watches(settings, T0 + timedelta(seconds=15))

    assert result["reason"] == ("critical metric regression on 2 consecutive polls: vllm:num_requests_waiting 7 > 6 "
                                "(before the apply 2, limit max(4, 3x))")
    assert target.read_bytes() == TARGET.encode() and _promotion(pid)["status"] == "rolled_back"


def test_preemptions_rising_too_fast_roll_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                               service: Service) -> None:
    settings, _target, _log, _marker = _setup(tmp_path, monkeypatch, service, preemptions_per_min=10, regression_polls=1)
    service.preemptions = 100.0
    pid = _apply(settings)  # the counter stood at 100 before the apply
    service.preemptions = 104.0
    assert check_watches(settings, T0 + timedelta(seconds=30))[0]["state"] == "watching"  # 8/min
    service.preemptions = 111.0
    [result] = check_watches(settings, T0 + timedelta(seconds=60))  # 11/min
    assert result["reason"] == ("critical metric regression on 1 consecutive polls: vllm:num_preemptions_total rising "
                                "11.0/min since the apply (limit 10/min)")
    assert _promotion(pid)["status"] == "rolled_back"


def test_the_watch_resumes_after_a_restart_from_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                             service: Service) -> None:
    from healing.config import load_settings

    settings, target, _log, _marker = _setup(tmp_path, monkeypatch, service, unhealthy_probes=3)
    pid = _apply(settings)
    service.health = 503
    check_watches(settings, T0 + timedelta(seconds=5))
    check_watches(settings, T0 + timedelta(seconds=10))
    assert _watch(pid)["progress"]["failures"] == 2
    dispose_engines()  # a new process: nothing in memory, settings loaded again
    [result] = check_watches(load_settings(), T0 + timedelta(seconds=15))
    assert result["state"] == "rolled_back" and target.read_bytes() == TARGET.encode()


def test_a_service_still_starting_is_given_start_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str,  # noqa: F811
                                                         service: Service) -> None:
    settings, target, _log, _marker = _setup(tmp_path, monkeypatch, service, start_timeout_s=30)
    pid = _apply(settings)
    service.close()  # the restarted service is loading its model: nothing listens yet
    for seconds in (5, 10, 15, 20, 25):
        assert check_watches(settings, T0 + timedelta(seconds=seconds))[0]["state"] == "watching"
    [result] = check_watches(settings, T0 + timedelta(seconds=30))
    assert result["state"] == "rolled_back"
    assert result["reason"].startswith(f"{service.url}/health not healthy 30 s after the apply (start_timeout_s 30; last probe: no answer")
    assert target.read_bytes() == TARGET.encode() and _promotion(pid)["status"] == "rolled_back"


def test_parse_metrics_sums_label_sets() -> None:
    text = ('# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine="0"} 3\n'
            'vllm:num_requests_waiting{engine="1"} 4\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc 0.5\n'
            "# TYPE other gauge\nother 9\n")
    assert parse_metrics(text) == {"waiting": 7.0, "kv_cache_usage": 0.5}


@pytest.mark.parametrize(("watch", "message"), [
    ({"health_url": "localhost:8000/health"},
     "config: tuning.watch.health_url must be an http:// or https:// URL, got 'localhost:8000/health'"),
    ({"poll_s": 0}, "tuning.watch.poll_s"),
    ({"unhealthy": 3}, "config: tuning.watch has unknown key(s) unhealthy (expected health_url, ignore_classes, metrics_url, "
                       "poll_s, preemptions_per_min, probe_timeout_s, regression_polls, start_timeout_s, unhealthy_probes, "
                       "waiting_factor, waiting_min)"),
    ({"ignore_classes": "kv_cache_preemption"}, "config: tuning.watch.ignore_classes must be a list of Observer class names"),
])
def test_watch_settings_problems_are_one_line(watch: dict[str, Any], message: str) -> None:
    from healing.errors import ConfigError
    from healing.tuning.runner_config import parse_runner_settings

    with pytest.raises(ConfigError) as info:
        parse_runner_settings({"watch": watch})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_watch_settings_defaults_and_window() -> None:
    from healing.tuning.runner_config import WatchSettings, parse_runner_settings

    assert parse_runner_settings({}).watch == WatchSettings()
    assert (WatchSettings().verify_window_s, WatchSettings().poll_s, WatchSettings().unhealthy_probes) == (600.0, 5.0, 3)
    assert parse_runner_settings({"verify_window_s": 0}).watch.verify_window_s == 0.0


def test_no_watch_when_the_window_is_zero_and_tune_watch_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 db_url: str, service: Service,  # noqa: F811
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from healing import cli

    settings, _target, _log, _marker = _setup(tmp_path, monkeypatch, service)
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "healing.tuning.orchestration_commands"]
                        if "healing.tuning.orchestration_commands" not in cli.COMMAND_MODULES else cli.COMMAND_MODULES)
    pid = _apply(settings, datetime.now(UTC))  # the CLI runs on the real clock
    assert cli.main(["tune", "watch"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"promotion {pid}: watching — HTTP 200")
    assert cli.main(["promotions", "list"]) == 0
    until = _watch(pid)["until"]
    assert capsys.readouterr().out.splitlines()[1].endswith(f"watching until {until:%H:%M:%S} UTC")
    service.health = 503
    assert cli.main(["tune", "watch"]) == 0  # 1 of 2 failed probes
    capsys.readouterr()
    assert cli.main(["tune", "watch"]) == 2
    assert capsys.readouterr().out == (f"promotion {pid}: rolled_back — {service.url}/health unhealthy on 2 consecutive "
                                       "probes (last: HTTP 503)\n")
    assert cli.main(["tune", "watch"]) == 0
    assert capsys.readouterr().out == "no promotion is being watched\n"

    settings = configure(tmp_path, monkeypatch, {**settings.section("tuning"), "verify_window_s": 0})
    second = _apply(settings, datetime.now(UTC))
    with session_scope(write=False) as session:
        assert session.get(PromotionWatch, second) is None


def test_after_a_rollback_the_observer_does_not_blame_the_restored_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          db_url: str, service: Service) -> None:  # noqa: F811
    from healing.tuning.runner import process_pending_intents

    settings, target, log, _marker = _setup(tmp_path, monkeypatch, service)
    assert process_pending_intents(settings, now=T0)["observed"] == []  # the main follower is at the end of the log
    pid = _apply(settings)
    with log.open("a") as fh:
        fh.write(OOM)

    summary = process_pending_intents(settings, now=T0 + timedelta(seconds=5))  # the watches go first

    [watch] = summary["watches"]
    assert (watch["promotion_id"], watch["state"], watch["skipped_logs"]) == (pid, "rolled_back", [str(log)])
    # the OOM was the promoted config's: no intent to lower gmu from the restored 0.8
    assert summary["observed"] == [] and summary["intents"] == []
    assert target.read_bytes() == TARGET.encode()
    with log.open("a") as fh:  # a failure after the rollback is the restored config's own: observed as usual
        fh.write(OOM)
    assert [o["class"] for o in process_pending_intents(settings, now=T0 + timedelta(seconds=10))["observed"]] == ["cuda_oom_torch"]


def test_a_newer_promotion_supersedes_the_watch_and_rollbacks_go_newest_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str, service: Service) -> None:  # noqa: F811
    from healing.errors import InputError
    from healing.tuning.promotions import rollback_promotion

    settings, target, _log, _marker = _setup(tmp_path, monkeypatch, service)
    first = _apply(settings)
    with session_scope() as session:
        second = int(tq.create_promotion(session, run_id=None, candidate_id=None, subsystem="vllm", old_values={GMU: 0.9},
                                         new_values={GMU: 0.95}, status="pending_review", reason="canary passed",
                                         expires_at=T0 + timedelta(hours=2), target_file=str(target), now=T0)["id"])
    approve_promotion(None, second, "alice", settings=settings, now=T0 + timedelta(seconds=30))
    assert target.read_text() == TARGET.replace("0.8   #", "0.95   #")
    assert (_watch(first)["state"], _watch(first)["reason"]) == ("stopped", f"superseded by promotion {second} before its window ended")
    assert _watch(second)["state"] == "watching"

    with pytest.raises(InputError) as info:
        rollback_promotion(None, first, "bob", settings=settings)
    assert str(info.value) == (f"promotion {first} cannot be rolled back before promotion {second}, applied later to the same "
                               f"file {target}: roll that back first")
    rollback_promotion(None, second, "bob", settings=settings)
    assert target.read_text() == APPLIED
    rollback_promotion(None, first, "bob", settings=settings)
    assert target.read_bytes() == TARGET.encode()
