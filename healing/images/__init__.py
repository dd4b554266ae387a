"""Image registry, golden store and healing actions (DESIGN.md §5: healing is atomic and reversible).

Public names are loaded on first use (PEP 562): `selfheal` imports healing.images.commands at start-up,
which runs this file, so nothing heavy may be imported here.

  register_image(path, *, settings, critical, interval_s, accept_current) -> dict     (registry)
  ImageService(settings, *, checker, notifier, actions, auto_heal)                    (service: check/heal policy)
  VLMSelfHealingDaemon(check_interval, auto_heal, vision_model_endpoint)              (daemon: the guide's API)
  GoldenStore, restore_from_golden, quarantine_copy                                   (golden, healer, quarantine)
  HealthStatus                                                                        (integrity)
"""

from __future__ import annotations

from healing._lazy import lazy_exports

_EXPORTS = {
    "register_image": "registry",
    "ImageService": "service",
    "HealReport": "service",
    "CheckRecord": "service",
    "VLMSelfHealingDaemon": "daemon",
    "GoldenStore": "golden",
    "restore_from_golden": "healer",
    "quarantine_copy": "quarantine",
    "HealthStatus": "integrity",
    "WebhookNotifier": "notify",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
