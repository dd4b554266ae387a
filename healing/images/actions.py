"""Custom healing actions: Python callables named in config (``healing.actions: ["module:function"]``)
or registered through ``VLMSelfHealingDaemon.set_healing_action`` / ``@daemon.healing_action``.

A healing action receives the check result (an object with the guide's HealthCheckResult fields:
image_path, status, confidence, metrics, findings, recommendation, timestamp) and returns True when it
healed the image. Plain functions and coroutine functions are both accepted; a coroutine is run to
completion on a private event loop (or, when called from a running loop, in a helper thread).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from healing.errors import ConfigError

HealingAction = Callable[[Any], Any]


def action_name(action: HealingAction) -> str:
    """A stable, readable name for audit records: module:qualname."""
    module = getattr(action, "__module__", None) or "?"
    return f"{module}:{getattr(action, '__qualname__', type(action).__name__)}"


def load_action(spec: str) -> HealingAction:
    """Import ``module:function`` (dotted attribute paths allowed after the colon)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"config: healing.actions entry {spec!r} must look like 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"config: healing.actions entry {spec!r}: cannot import {module_name} ({exc.__class__.__name__})") from None
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"config: healing.actions entry {spec!r}: {module_name} has no attribute {attr}")
    if not callable(target):
        raise ConfigError(f"config: healing.actions entry {spec!r} is not callable")
    return target


def load_actions(specs: list[str]) -> list[HealingAction]:
    """Every configured action, in order; the first bad entry raises one ConfigError line."""
    return [load_action(spec) for spec in specs]


def run_action(action: HealingAction, result: Any) -> bool:
    """Call a sync or async healing action and return whether it reports the image healed."""
    outcome = action(result)
    if inspect.isawaitable(outcome):
        outcome = _await(outcome)
    return outcome is True


def _await(awaitable: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coroutine(awaitable))
    # Called from inside a running loop (e.g. the async daemon's thread pool is not in use): a
    # nested asyncio.run is impossible there, so run the coroutine on its own loop in a thread.
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(_as_coroutine(awaitable))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name="selfheal-action")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
