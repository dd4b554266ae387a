import asyncio
import json
import threading
import time

import httpx
import pytest
from sqlmodel import select

from healing.config import NotificationSettings
from healing.errors import ConfigError
from healing.images.actions import load_action, run_action
from healing.images.daemon import VLMSelfHealingDaemon
from healing.images.integrity import HealthStatus
from healing.images.notify import WebhookNotifier
from healing.images.registry import register_image
from healing.images.service import ImageService
from healing.worker import WorkerLock, WorkerLockedError
from storage import queries
from storage.engine import session_scope
from storage.models import Alert, Heal
from tests.images.conftest import flip_idat_byte

HOOK = "http://hooks.example/notify?token=s3cr3t"


def alerts():
    with session_scope(write=False) as session:
        return [a.model_dump() for a in session.exec(select(Alert).order_by(Alert.id))]


def notifier_with(handler, retries=2):
    cfg = NotificationSettings(enabled=True, webhook=HOOK, timeout=2.0, retries=retries)
    return WebhookNotifier(cfg, client_factory=lambda: httpx.Client(transport=httpx.MockTransport(handler)), backoff_s=0.01)


def make_alert(**kw):
    with session_scope() as session:
        return queries.record_alert(session, kind="image.critical", severity="critical", subject="/x.rts.png",
                                    message="x is critical", webhook=True, **kw)["id"]


def test_webhook_is_retried_and_delivery_recorded(settings):
    bodies = []
    statuses = iter([500, 503, 200])

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(next(statuses))

    notifier = notifier_with(handler)
    alert_id = make_alert()
    notifier.submit(alert_id)
    assert notifier.flush(5)
    notifier.close()
    row = alerts()[0]
    assert (row["webhook_state"], row["webhook_attempts"], row["webhook_last_error"]) == ("delivered", 3, None)
    assert bodies[0] == {"id": alert_id, "kind": "image.critical", "severity": "critical", "subject": "/x.rts.png",
                         "reason": None, "message": "x is critical", "created_at": bodies[0]["created_at"], "source": "selfheal"}
    assert "s3cr3t" not in json.dumps(bodies)


def test_webhook_failure_is_recorded_without_the_url(settings):
    def handler(request):
        raise httpx.ConnectError(f"cannot connect to {HOOK}")

    notifier = notifier_with(handler, retries=1)
    notifier.submit(make_alert())
    notifier.close()
    row = alerts()[0]
    assert (row["webhook_state"], row["webhook_attempts"]) == ("failed", 2)
    assert row["webhook_last_error"] == "ConnectError: cannot connect to <webhook>"


def test_slow_webhook_never_delays_a_check(settings, make_image):
    settings.healing.notification = NotificationSettings(enabled=True, webhook=HOOK, retries=0)
    release = threading.Event()

    def handler(request):
        release.wait(5)
        return httpx.Response(204)

    notifier = notifier_with(handler, retries=0)
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    flip_idat_byte(image)
    start = time.perf_counter()
    record = ImageService(settings, notifier=notifier).check(image_id)
    elapsed = time.perf_counter() - start
    assert record.status == "critical" and elapsed < 2.0
    assert alerts()[0]["webhook_state"] == "pending"
    release.set()
    notifier.close()
    assert alerts()[0]["webhook_state"] == "delivered"


def test_pending_alerts_are_resent_after_a_restart(settings):
    sent = []
    make_alert()
    make_alert()
    notifier = notifier_with(lambda r: sent.append(json.loads(r.content)["id"]) or httpx.Response(200))
    assert notifier.submit_pending() == 2
    notifier.close()
    assert sorted(sent) == [a["id"] for a in alerts()]


def test_disabled_notifier_queues_nothing(settings):
    notifier = WebhookNotifier(NotificationSettings())
    notifier.submit(make_alert())
    assert notifier.enabled is False and notifier._thread is None


def test_load_action_errors_are_one_config_line():
    assert load_action("json:dumps") is json.dumps
    with pytest.raises(ConfigError, match="cannot import no_such_module_xyz"):
        load_action("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="json has no attribute nope"):
        load_action("json:nope")
    with pytest.raises(ConfigError, match="is not callable"):
        load_action("json:__name__")


def test_run_action_accepts_sync_and_async_and_only_true_counts():
    async def coro(result):
        await asyncio.sleep(0)
        return result == "x"

    assert run_action(coro, "x") is True
    assert run_action(coro, "y") is False
    assert run_action(lambda r: 1, "x") is False  # truthy is not True: an action must say True

    async def inside_loop():
        return run_action(coro, "x")

    assert asyncio.run(inside_loop()) is True


def test_daemon_api_as_in_the_guide(settings, make_image):
    image = make_image()
    good = image.read_bytes()
    daemon = VLMSelfHealingDaemon(check_interval=1, auto_heal=True, vision_model_endpoint="http://localhost:1234/v1")
    daemon.register_image(str(image), critical=True)
    calls = []

    @daemon.healing_action
    async def custom_heal(health_result):
        calls.append(health_result.status)
        if health_result.status == HealthStatus.CRITICAL:
            image.write_bytes(good)
            return True
        return False

    daemon.set_healing_action(custom_heal)
    assert daemon.healing_actions == [custom_heal]
    flip_idat_byte(image)

    async def main():
        await daemon.start_background()
        assert daemon.running
        with pytest.raises(WorkerLockedError, match="another worker is already running"):
            WorkerLock(settings.home).acquire()
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.05)
        await daemon.stop()

    asyncio.run(main())
    assert calls == ["critical"] and image.read_bytes() == good
    with session_scope(write=False) as session:
        heals = [h.model_dump() for h in session.exec(select(Heal))]
    assert [(h["outcome"], h["detail"]["action"].endswith("custom_heal")) for h in heals] == [("healed", True)]
    with WorkerLock(settings.home):  # stop() released it
        pass


def test_daemon_start_runs_until_stop_is_awaited_from_another_task(settings, make_image):
    image = make_image()
    daemon = VLMSelfHealingDaemon(check_interval=300, auto_heal=False)
    daemon.register_image(str(image))
    events = []

    async def main():
        runner = asyncio.create_task(daemon.start())
        for _ in range(200):  # the first cycle checks the image at once
            if daemon.last_results:
                break
            await asyncio.sleep(0.05)
        events.append(("checked", [r.status for r in daemon.last_results], runner.done()))
        await asyncio.sleep(0.3)
        events.append(("still running", runner.done()))
        await daemon.stop()
        await asyncio.wait_for(runner, 10)  # start() returns once stopped
        events.append(("returned", runner.done(), daemon.running))

    asyncio.run(main())
    assert events == [("checked", ["healthy"], False), ("still running", False), ("returned", True, False)]
    with WorkerLock(settings.home):  # released
        pass
