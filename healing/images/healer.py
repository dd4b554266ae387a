"""Heal one image from its golden copy: quarantine the damaged file, restore atomically, re-verify."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healing.errors import InputError, SelfHealError
from healing.images.golden import GoldenRef, GoldenStore, sha256_file
from healing.images.quarantine import quarantine_copy
from healing.safeio import describe_oserror, lstat_kind


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
    touched: bool = False  # True once the restore may have changed the file on disk

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
    started: Callable[[HealOutcome], None] | None = None,
) -> HealOutcome:
    """Keep what is at ``image`` in quarantine (when a directory is given), restore the golden copy over it
    atomically and verify the result (sha256 equals the golden copy; PixelRTS integrity holds).

    ``started(outcome)`` is called after the quarantine copy and before the file is touched (the caller
    records the heal as started there); if it raises, the file is left alone and the heal fails.
    Nothing is read or written through a symlink at ``image``: a link is quarantined as a link and
    replaced by the restored file."""
    from healing.pixelrts import verify

    image = Path(image)
    outcome = HealOutcome(str(image), "restore_golden", False, "")
    kind = lstat_kind(image)
    outcome.details["found"] = kind or "nothing"
    if kind == "a regular file":
        try:
            outcome.before_sha256 = sha256_file(image, follow_symlinks=False)
        except InputError:
            outcome.before_sha256 = None  # replaced while we looked: quarantine below decides
    if quarantine_dir is not None and kind is not None:
        try:
            outcome.quarantine_path = str(quarantine_copy(image, quarantine_dir))
        except InputError as exc:
            outcome.details["quarantine"] = f"not kept: {exc}"  # a FIFO or device holds no content to keep
        except SelfHealError as exc:
            # The damaged file must be kept before it is overwritten: no copy, no restore.
            outcome.message = f"could not quarantine the damaged file: {exc}"
            return outcome
    if started is not None:
        try:
            started(outcome)
        except SelfHealError as exc:
            outcome.message = f"could not record the heal before restoring: {exc}"
            if outcome.quarantine_path:
                Path(outcome.quarantine_path).unlink(missing_ok=True)  # nothing refers to it
                outcome.quarantine_path = None
            return outcome
    outcome.touched = True
    try:
        outcome.after_sha256 = store.restore(ref, image)
    except SelfHealError as exc:
        outcome.message = str(exc)
        return outcome
    except OSError as exc:
        outcome.message = f"restore failed: {describe_oserror(exc)}"
        return outcome
    if outcome.after_sha256 != ref.sha256:
        outcome.message = "restored file does not match the golden copy"
        return outcome
    try:
        report = verify(image)
    except SelfHealError as exc:
        outcome.message = f"restored file does not verify: {exc}"
        return outcome
    if report.image.is_pixelrts and not report.ok:
        outcome.message = "restored file does not verify: " + "; ".join(p.message for p in report.problems)
        return outcome
    outcome.healed = True
    outcome.message = f"restored from golden copy {ref.sha256[:12]}…"
    outcome.details["hash_verified"] = report.hash_verified
    return outcome
