"""The image guide's Python API: ``VLMSelfHealingDaemon`` (asyncio), built on the same service as the worker.

    daemon = VLMSelfHealingDaemon(check_interval=300, auto_heal=True)
    daemon.register_image("kernel.rts.png", critical=True)

    @daemon.healing_action              # sync or async; gets the check result, returns True if it healed
    async def custom_heal(health_result): ...

    asyncio.run(daemon.start())         # runs until stopped: SIGINT/SIGTERM, or daemon.stop() from a task

    await daemon.start_background()     # or: checks run in a background task of the running loop ...
    ...
    await daemon.stop()                 # ... until stopped

The daemon holds the same lock as `selfheal worker` ($SELFHEAL_HOME/worker.lock) while it runs, so an
application embedding it and a worker never check the same database twice. Checks run in a thread
(asyncio.to_thread): hashing and analysis never block the caller's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import signal
import time
from typing import Any

from healing.config import Settings, load_settings
from healing.errors import SelfHealError
from healing.images.actions import HealingAction

log = logging.getLogger("selfheal.daemon")


class VLMSelfHealingDaemon:
    """Periodic checks and healing of registered images, inside an asyncio application."""

    def __init__(
        self,
        check_interval: int = 300,
        auto_heal: bool = True,
        vision_model_endpoint: str | None = None,
        *,
        settings: Settings | None = None,
        checker: Any | None = None,
    ) -> None:
        if check_interval < 1:
            raise ValueError(f"check_interval must be ≥ 1 second, got {check_interval}")
        self.settings = copy.deepcopy(settings or load_settings())
        if vision_model_endpoint:
            self.settings.vision_model.endpoint = vision_model_endpoint
        self.check_interval = int(check_interval)
        self.auto_heal = bool(auto_heal)
        self._checker = checker
        self._actions: list[HealingAction] = []
        self._service: Any = None
        self._lock: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop_requested: asyncio.Event | None = None
        self._last_checked: dict[int, float] = {}
        self.last_results: list[Any] = []

    # ------------------------------------------------------------------ configuration

    def register_image(self, path: str, critical: bool = False, interval: int | None = None,
                       accept_current: bool = False) -> dict[str, Any]:
        """Register ``path`` (golden copy + baseline); see healing.images.registry.register_image."""
        from healing.images.registry import register_image
        from storage.migrate import upgrade

        upgrade()
        return register_image(path, settings=self.settings, critical=critical, interval_s=interval or self.check_interval,
                              accept_current=accept_current, actor="daemon")

    def set_healing_action(self, action: HealingAction) -> HealingAction:
        """Make ``action`` the one custom healing action (replacing any set before); returns it."""
        self._actions[:] = [action]
        return action

    def healing_action(self, action: HealingAction) -> HealingAction:
        """Decorator: add ``action`` to the custom healing actions (run in order before the golden restore)."""
        if action not in self._actions:
            self._actions.append(action)
        return action

    @property
    def healing_actions(self) -> list[HealingAction]:
        return list(self._actions)

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _ensure_service(self) -> Any:
        if self._service is None:
            from healing.images.actions import load_actions
            from healing.images.notify import WebhookNotifier
            from healing.images.service import ImageService

            configured = load_actions(self.settings.healing.actions)
            self._service = ImageService(self.settings, checker=self._checker,
                                         notifier=WebhookNotifier(self.settings.healing.notification),
                                         auto_heal=self.auto_heal, actor="daemon")
            self._configured_actions = configured
        # Config actions first, then the ones registered in Python (which may change between cycles).
        self._service.actions = [*self._configured_actions, *self._actions]
        return self._service

    def _due_cycle(self) -> tuple[list[Any], float]:
        """Check every image whose interval has elapsed; return the records and seconds until the next is due."""
        from storage.engine import session_scope
        from storage.worker_queries import image_schedule

        service = self._ensure_service()
        service.reconcile_heals()  # heals a killed process left "started"; the checks below re-check their files
        with session_scope(write=False) as session:
            schedule = image_schedule(session)
        now = time.monotonic()
        records, wait = [], float(self.check_interval)
        for row in schedule:
            interval = float(row["interval_s"] or self.check_interval)
            last = self._last_checked.get(row["id"])
            if last is None or now - last >= interval:
                try:
                    records.append(service.check(row["id"]))
                except LookupError:
                    continue
                self._last_checked[row["id"]] = time.monotonic()
                wait = min(wait, interval)
            else:
                wait = min(wait, interval - (now - last))
        return records, max(0.05, wait)

    async def check_once(self) -> list[Any]:
        """Check (and heal, per policy) every registered image now; returns the CheckRecords."""
        from storage.migrate import upgrade

        await asyncio.to_thread(upgrade)
        self._last_checked.clear()
        records, _ = await asyncio.to_thread(self._due_cycle)
        self.last_results = records
        return records

    async def start(self) -> None:
        """The guide's ``await daemon.start()``: check and heal until stopped, then return.

        Stops on SIGINT or SIGTERM (when called in the main thread) or when ``stop()`` is awaited from
        another task or a healing action; the lock is released and queued alerts delivered either way.
        For checks in the background of an application that goes on, use :meth:`start_background`.
        """
        await self.start_background()
        loop = asyncio.get_running_loop()
        stop_requested = self._stop_requested = asyncio.Event()
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop_requested.set)
                handled.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
                pass
        log.info("daemon running: %d s interval, auto-heal %s", self.check_interval, "on" if self.auto_heal else "off")
        try:
            waiter = asyncio.ensure_future(stop_requested.wait())
            assert self._task is not None
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            self._stop_requested = None
            await self.stop()
        log.info("daemon stopped")

    async def start_background(self) -> None:
        """Take the worker lock, upgrade the schema and start checking in a background task; returns at once."""
        if self.running:
            return
        from healing.worker import WorkerLock
        from storage.migrate import upgrade

        self._lock = WorkerLock(self.settings.home)
        self._lock.acquire()
        try:
            await asyncio.to_thread(upgrade)
        except BaseException:
            self._lock.release()
            raise
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="selfheal-daemon")

    async def _loop(self) -> None:
        while True:
            try:
                records, wait = await asyncio.to_thread(self._due_cycle)
                if records:
                    self.last_results = records
            except SelfHealError as exc:  # database locked or full: one line, the next cycle tries again
                log.warning("daemon cycle failed: %s", exc)
                wait = float(self.check_interval)
            except Exception:  # noqa: BLE001 - a failed cycle is logged; the daemon keeps watching
                log.exception("daemon cycle failed")
                wait = float(self.check_interval)
            await asyncio.sleep(wait)

    async def stop(self) -> None:
        """Stop the background task, deliver queued alerts and release the lock (a running ``start()`` returns)."""
        if self._stop_requested is not None:
            self._stop_requested.set()
        if self._task is None and self._lock is None:
            return  # never started, or already stopped
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._service is not None and self._service.notifier is not None:
            await asyncio.to_thread(self._service.notifier.close, self.settings.healing.notification.timeout)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
