"""Quarantine: keep a copy of a damaged file (and its sidecar) before anything overwrites it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from healing.images.golden import atomic_copy, sidecar_of


def quarantine_copy(image: str | os.PathLike[str], quarantine_dir: str | os.PathLike[str], *, now: float | None = None) -> Path:
    """Copy ``image`` to ``quarantine_dir/<UTC timestamp>-<name>`` (never moves it); return the copy's path."""
    image = Path(image)
    qdir = Path(quarantine_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    base = f"{stamp}-{image.name}"
    target = qdir / base
    counter = 1
    while target.exists():
        counter += 1
        target = qdir / f"{stamp}-{counter}-{image.name}"
    atomic_copy(image, target, mode=0o444)
    side = sidecar_of(image)
    if side is not None:
        atomic_copy(side, target.with_name(target.name + ".meta.json"), mode=0o444)
    return target
