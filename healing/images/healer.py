"""Heal one image from its golden copy: quarantine the damaged file, restore atomically, re-verify."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.errors import SelfHealError
from healing.images.golden import GoldenRef, GoldenStore, sha256_file
from healing.images.quarantine import quarantine_copy


@dataclass
class HealOutcome:
    """What a heal did. ``healed`` is True only when the file verifies and equals the golden copy."""

    image_path: str
    action: str  # restore_golden | none
    healed: bool
    message: str
    quarantine_path: str | None = None
    before_sha256: str | None = None
    after_sha256: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_path": self.image_path,
            "action": self.action,
            "healed": self.healed,
            "message": self.message,
            "quarantine_path": self.quarantine_path,
            "before_sha256": self.before_sha256,
            "after_sha256": self.after_sha256,
            "details": self.details,
        }


def restore_from_golden(
    image: str | os.PathLike[str],
    ref: GoldenRef,
    store: GoldenStore,
    *,
    quarantine_dir: str | os.PathLike[str] | None,
) -> HealOutcome:
    """Copy the damaged file to quarantine (when a directory is given), restore the golden copy over
    it atomically and verify the result (sha256 equals the golden copy; PixelRTS integrity holds)."""
    from healing.pixelrts import verify

    image = Path(image)
    before = None
    qpath = None
    if image.exists():
        try:
            before = sha256_file(image)
        except SelfHealError:
            before = None
        if quarantine_dir is not None and before is not None:
            qpath = str(quarantine_copy(image, quarantine_dir))
    try:
        after = store.restore(ref, image)
    except SelfHealError as exc:
        return HealOutcome(str(image), "restore_golden", False, str(exc), qpath, before)
    except OSError as exc:
        return HealOutcome(str(image), "restore_golden", False, f"restore failed: {exc.strerror or exc}", qpath, before)
    if after != ref.sha256:
        return HealOutcome(str(image), "restore_golden", False, "restored file does not match the golden copy", qpath, before, after)
    try:
        report = verify(image)
    except SelfHealError as exc:
        return HealOutcome(str(image), "restore_golden", False, f"restored file does not verify: {exc}", qpath, before, after)
    if report.image.is_pixelrts and not report.ok:
        problems = "; ".join(p.message for p in report.problems)
        return HealOutcome(str(image), "restore_golden", False, f"restored file does not verify: {problems}", qpath, before, after)
    return HealOutcome(str(image), "restore_golden", True, f"restored from golden copy {ref.sha256[:12]}…", qpath, before, after,
                       {"hash_verified": report.hash_verified})
