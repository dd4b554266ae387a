"""Heal one image from its parity or its golden copy: quarantine the damaged file, replace atomically,
re-verify."""

from __future__ import annotations

import hashlib
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
    action: str  # repair_parity | restore_golden | none
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


def _quarantine_and_start(outcome: HealOutcome, image: Path, kind: str | None,
                          quarantine_dir: str | os.PathLike[str] | None,
                          started: Callable[[HealOutcome], None] | None, doing: str) -> bool:
    """Keep what is at ``image`` in quarantine (a FIFO or device holds no content: noted, not kept), then
    call ``started``; False, with the reason in ``outcome.message``, when the file must not be touched."""
    if quarantine_dir is not None and kind is not None:
        try:
            outcome.quarantine_path = str(quarantine_copy(image, quarantine_dir))
        except InputError as exc:
            outcome.details["quarantine"] = f"not kept: {exc}"
        except SelfHealError as exc:
            # The damaged file must be kept before it is overwritten: no copy, no heal.
            outcome.message = f"could not quarantine the damaged file: {exc}"
            return False
    if started is not None:
        try:
            started(outcome)
        except SelfHealError as exc:
            outcome.message = f"could not record the heal before {doing}: {exc}"
            if outcome.quarantine_path:
                Path(outcome.quarantine_path).unlink(missing_ok=True)  # nothing refers to it
                outcome.quarantine_path = None
            return False
    return True


def _replace_and_verify(outcome: HealOutcome, image: Path, write: Callable[[], str], expected_sha256: str,
                        noun: str, mismatch: str) -> Any:
    """Replace the file (``write`` returns the new sha256), compare it with ``expected_sha256`` and verify
    it; the verify report, or None with the reason in ``outcome.message``."""
    from healing.pixelrts import verify

    outcome.touched = True
    try:
        outcome.after_sha256 = write()
    except SelfHealError as exc:
        outcome.message = str(exc)
        return None
    except OSError as exc:
        outcome.message = f"{noun} failed: {describe_oserror(exc)}"
        return None
    if outcome.after_sha256 != expected_sha256:
        outcome.message = mismatch
        return None
    try:
        report = verify(image)
    except SelfHealError as exc:
        outcome.message = f"{noun}d file does not verify: {exc}"
        return None
    if report.image.is_pixelrts and not report.ok:
        outcome.message = f"{noun}d file does not verify: " + "; ".join(p.message for p in report.problems)
        return None
    return report


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
    image = Path(image)
    outcome = HealOutcome(str(image), "restore_golden", False, "")
    kind = lstat_kind(image)
    outcome.details["found"] = kind or "nothing"
    if kind == "a regular file":
        try:
            outcome.before_sha256 = sha256_file(image, follow_symlinks=False)
        except InputError:
            outcome.before_sha256 = None  # replaced while we looked: quarantine below decides
    if not _quarantine_and_start(outcome, image, kind, quarantine_dir, started, "restoring"):
        return outcome
    report = _replace_and_verify(outcome, image, lambda: store.restore(ref, image), ref.sha256, "restore",
                                 "restored file does not match the golden copy")
    if report is None:
        return outcome
    outcome.healed = True
    outcome.message = f"restored from golden copy {ref.sha256[:12]}…"
    outcome.details["hash_verified"] = report.hash_verified
    return outcome


def repair_from_parity(
    image: str | os.PathLike[str],
    parity_file: str | os.PathLike[str],
    *,
    quarantine_dir: str | os.PathLike[str] | None,
    started: Callable[[HealOutcome], None] | None = None,
) -> HealOutcome:
    """Rebuild ``image`` from its damaged bytes and its erasure-coded parity (no golden copy needed).

    The repair is computed in memory and verified (every block hash and the whole file's sha256) before
    anything is touched; an unverifiable repair is refused and the file is left as it is. Then, as for a
    golden restore: quarantine copy, ``started(outcome)``, atomic replace, re-verify. A symlink or other
    non-regular entry at ``image`` is not read through: its content counts as lost."""
    from healing.images import parity as parity_mod
    from healing.images.golden import atomic_write_bytes

    image = Path(image)
    outcome = HealOutcome(str(image), "repair_parity", False, "")
    kind = lstat_kind(image)
    outcome.details["found"] = kind or "nothing"
    try:
        parity = parity_mod.load(parity_file)
    except SelfHealError as exc:
        outcome.message = f"parity not usable: {exc}"
        return outcome
    data = b""
    if kind == "a regular file":
        try:
            data = parity_mod.read_image_bytes(image, parity.layout.file_length)
        except InputError:
            data = b""  # replaced while we looked: nothing of it is trusted
        outcome.before_sha256 = hashlib.sha256(data).hexdigest()
    diagnosis = parity_mod.diagnose(data, parity)
    outcome.details.update(parity_sha256=parity.file_sha256, damaged_blocks=len(diagnosis.damaged_blocks),
                           damaged_ranges=diagnosis.damaged_ranges()[:50], damaged_shards=len(diagnosis.damaged_shards),
                           block_size=parity.layout.block_size)
    try:
        repaired = parity_mod.repair(data, parity)
    except SelfHealError as exc:
        outcome.message = f"parity cannot repair: {exc}"
        return outcome
    if not _quarantine_and_start(outcome, image, kind, quarantine_dir, started, "repairing"):
        return outcome

    def write() -> str:
        atomic_write_bytes(image, repaired, mode=0o644)
        return sha256_file(image, follow_symlinks=False)

    report = _replace_and_verify(outcome, image, write, parity.file_sha256, "repair",
                                 "repaired file on disk does not match its recorded sha256")
    if report is None:
        return outcome
    outcome.healed = True
    outcome.message = (f"repaired from parity: {len(diagnosis.damaged_blocks)} damaged block(s) of "
                       f"{parity.layout.block_size} bytes rebuilt, sha256 {parity.file_sha256[:12]}… verified")
    outcome.details["hash_verified"] = report.hash_verified
    return outcome
