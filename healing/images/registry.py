"""The image registry: registering (and re-registering) an image stores its golden copy and baseline.

Registering verifies the file first: a PixelRTS image whose payload does not match its own
``data_hash`` (or that fails any other integrity check) is refused unless the operator passes
``accept_current`` — a golden copy must be known-good. Re-registering an image whose content changed
is how an operator accepts a legitimate change: the new content becomes the golden copy and baseline,
the "marked bad" state and the failure count are cleared, and the decision is audited.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from healing.config import Settings
from healing.errors import CorruptedError, InputError, SelfHealError
from healing.images.golden import GoldenRef, GoldenStore, atomic_write_bytes, sha256_file, sidecar_of
from healing.images.integrity import baseline_file, iso_now
from healing.safeio import WriteError, describe_oserror

KIND_CHANGE_ACCEPTED = "image.change_accepted"
KIND_REGISTER_REFUSED = "image.register_refused"


def normalise_path(path: str | os.PathLike[str], base: Path | None = None) -> str:
    """Absolute, normalised path text (symlinks kept: the operator's name for the file is the key)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return os.path.normpath(str(p))


def golden_ref(image: dict[str, Any], store: GoldenStore) -> GoldenRef | None:
    """The golden copy reference of a registered image row (None when it has none)."""
    sha = image.get("golden_sha256")
    if not sha:
        return None
    sidecar_name = (image.get("baseline") or {}).get("sidecar_name")
    return store.ref(sha, sidecar_name)


def load_baseline(image: dict[str, Any]) -> dict[str, Any] | None:
    """The full baseline of a registered image (from its baseline file), or None if it is gone."""
    path = image.get("baseline_path")
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_baseline(home: Path, baseline: dict[str, Any]) -> Path:
    target = baseline_file(home, baseline["file_sha256"])
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot create {target.parent}: {describe_oserror(exc)}") from None
        atomic_write_bytes(target, json.dumps(baseline, separators=(",", ":")).encode("utf-8"), mode=0o444)
    return target


def _create_parity(ref: GoldenRef, settings: Settings) -> dict[str, Any] | None:
    """Erasure-coded parity of the golden copy beside it (issue 14), unless ``healing.parity_percent`` is 0;
    returns its capacity (what the baseline summary records) or None."""
    from healing.images.parity import create_for_golden

    if settings.healing.parity_percent <= 0:
        return None
    return create_for_golden(ref.path, ref.sha256, settings.golden_dir, settings.healing.parity_percent)


@dataclass
class _Prepared:
    """A file verified and stored (golden copy, parity, baseline file), ready for its database row."""

    text: str
    name: str
    sha: str
    golden_sha256: str
    golden_path: str
    baseline_path: str
    summary: dict[str, Any]
    hash_verified: bool | None
    accepted_current: bool


class _Refused(CorruptedError):
    """A damaged image refused at registration; ``event`` is the audit event that records the refusal."""

    def __init__(self, message: str, event: tuple[str, str, dict[str, Any]]) -> None:
        super().__init__(message)
        self.event = event


def _prepare(path: str | os.PathLike[str], settings: Settings, accept_current: bool) -> _Prepared:
    """The file work of a registration: checks, golden copy, parity, baseline. Touches no database."""
    from healing.analysis import block_entropy, build_baseline
    from healing.pixelrts import read_image, verify_image

    text = normalise_path(path)
    file = Path(text)
    if file.is_symlink():
        # The worker judges a registered image by its directory entry (a link there is a security finding),
        # so the entry registered must be the file itself.
        raise InputError(f"{text}: is a symbolic link; register the file it points to ({os.path.realpath(text)})")
    if file.is_dir():
        raise InputError(f"{text}: is a directory, not an image")
    if not file.exists():
        raise InputError(f"{text}: no such file")
    sha = sha256_file(file)
    image = read_image(file, max_pixels=settings.pixelrts.max_pixels,
                       max_metadata_bytes=settings.pixelrts.max_metadata_bytes)
    report = verify_image(image)
    problems = [p.message for p in report.problems]
    if image.is_pixelrts and not report.ok and not accept_current:
        raise _Refused(
            f"{text}: refusing to register a damaged image ({problems[0] if problems else 'integrity not proven'}); "
            "pass --accept-current to register it as it is",
            (KIND_REGISTER_REFUSED, text, {"file_sha256": sha, "problems": problems}))

    store = GoldenStore(settings.golden_dir)
    ref = store.store(file, sha)
    parity = _create_parity(ref, settings)
    block_size = settings.health_check.block_size
    baseline = build_baseline(stream=image.stream, grid_size=image.grid_size, block_size=block_size, file_sha256=sha,
                              data_hash=(image.metadata or {}).get("data_hash"),
                              block_entropy=block_entropy(image.stream, block_size), image_path=text, created=iso_now())
    del image
    baseline_path = _write_baseline(settings.home, baseline)
    side = sidecar_of(file)
    summary = {
        "file_sha256": sha, "data_hash": baseline["data_hash"], "grid_size": baseline["grid_size"],
        "block_size": baseline["block_size"], "blocks": len(baseline["block_sha256"]),
        "mean_entropy": baseline["mean_entropy"], "sidecar_name": side.name if side else None,
        "file_size": file.stat().st_size, "hash_verified": report.hash_verified,
        "accepted_with_problems": problems if (accept_current and problems) else [],
        "parity": parity,
    }
    return _Prepared(text, file.name, sha, ref.sha256, str(ref.path), str(baseline_path), summary, report.hash_verified,
                     bool(accept_current and problems))


def _record(session: Any, prepared: _Prepared, *, settings: Settings, critical: bool | None, interval_s: int | None,
            actor: str) -> dict[str, Any]:
    """The database part of a registration, in the caller's transaction; returns register_image's result."""
    from storage import queries
    from storage.audit import append_event

    text, sha, summary = prepared.text, prepared.sha, prepared.summary
    previous = queries.get_image(session, path=text)
    interval = (interval_s or settings.health_check.interval) if previous is None else interval_s
    row = queries.upsert_image(
        session, text, name=prepared.name,
        critical=critical if critical is not None else (False if previous is None else None),
        interval_s=interval, golden_sha256=prepared.golden_sha256, golden_path=prepared.golden_path,
        baseline_path=prepared.baseline_path, baseline=summary, actor=actor,
    )
    row = queries.set_image_flags(session, row["id"], marked_bad=False, consecutive_heal_failures=0, actor=actor)
    changed = previous is not None and previous.get("golden_sha256") not in (None, sha)
    if changed:
        append_event(session, KIND_CHANGE_ACCEPTED, text, {
            "image_id": row["id"], "old_golden_sha256": previous["golden_sha256"], "new_golden_sha256": sha,
            "problems_accepted": summary["accepted_with_problems"],
        }, actor)
    return {"image": row, "golden_sha256": sha, "baseline_path": prepared.baseline_path, "changed": changed,
            "hash_verified": prepared.hash_verified, "accepted_current": prepared.accepted_current}


def register_image(
    path: str | os.PathLike[str],
    *,
    settings: Settings,
    critical: bool | None = None,
    interval_s: int | None = None,
    accept_current: bool = False,
    actor: str = "cli",
) -> dict[str, Any]:
    """Verify ``path``, store its golden copy and baseline, and register (or update) it.

    Returns {"image": <row dict>, "golden_sha256", "baseline_path", "changed" (content differs from
    the previous golden copy), "hash_verified", "accepted_current" (registered despite problems)}.
    Raises InputError (missing/unreadable/not a PNG, exit 3) or CorruptedError (damaged and not
    accepted, exit 2); a refusal is audited.
    """
    from storage.audit import append_event
    from storage.engine import session_scope

    try:
        prepared = _prepare(path, settings, accept_current)
    except _Refused as refused:
        with session_scope() as session:
            append_event(session, *refused.event, actor)
        raise CorruptedError(str(refused)) from None
    with session_scope() as session:
        return _record(session, prepared, settings=settings, critical=critical, interval_s=interval_s, actor=actor)


REGISTER_BATCH = 200  # registrations recorded per transaction by register_many


def register_many(
    paths: Iterable[str | os.PathLike[str]],
    *,
    settings: Settings,
    critical: bool | None = None,
    interval_s: int | None = None,
    accept_current: bool = False,
    actor: str = "cli",
    threads: int = 4,
) -> Iterator[tuple[str, dict[str, Any] | SelfHealError]]:
    """Register many files: (normalised path, register_image's result or the error) for each, in order.

    The file work (hash, verify, golden copy, parity, baseline: mostly I/O and fsync) runs in ``threads``
    threads; the rows and audit events of REGISTER_BATCH files are written in one transaction. A file
    that fails is reported and does not stop the others; refusals are audited as by register_image.
    A path given twice is registered once (its second result repeats the first)."""
    import contextvars
    from concurrent.futures import Future, ThreadPoolExecutor

    from healing.safeio import deferred_directory_fsyncs
    from storage.engine import session_scope

    def prepare(text: str) -> _Prepared | SelfHealError:
        try:
            return _prepare(text, settings, accept_current)
        except SelfHealError as exc:
            return exc

    texts = list(dict.fromkeys(normalise_path(p) for p in paths))
    chunks = [texts[start:start + REGISTER_BATCH] for start in range(0, len(texts), REGISTER_BATCH)]
    with deferred_directory_fsyncs() as syncs, \
            ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="register") as pool:

        def submit(chunk: list[str]) -> list[Future[_Prepared | SelfHealError]]:
            # Each task runs in a copy of this context: its directory fsyncs are left to ``syncs``.
            return [pool.submit(contextvars.copy_context().run, prepare, text) for text in chunk]

        # The files of the next chunk are prepared while this chunk's rows are written.
        ahead = submit(chunks[0]) if chunks else []
        for number, chunk in enumerate(chunks):
            current = ahead
            ahead = submit(chunks[number + 1]) if number + 1 < len(chunks) else []
            prepared = [future.result() for future in current]
            syncs.flush()  # every rename this chunk's rows will refer to is durable before they commit
            with session_scope() as session:
                results = _record_chunk(session, prepared, settings=settings, critical=critical,
                                        interval_s=interval_s, actor=actor)
            yield from zip(chunk, results, strict=True)


def _record_chunk(session: Any, prepared: list[_Prepared | SelfHealError], *, settings: Settings,
                  critical: bool | None, interval_s: int | None, actor: str) -> list[dict[str, Any] | SelfHealError]:
    """The database part of register_many for one chunk, in the caller's transaction: the new paths in one
    insert (storage.queries.insert_images: the rows and events _record would write), the paths already
    registered one by one through _record (re-registration: change accepted, flags cleared), refusals audited."""
    from storage.audit import append_event
    from storage.queries import insert_images

    fresh = [item for item in prepared if isinstance(item, _Prepared)]
    rows = insert_images(session, [{
        "path": item.text, "name": item.name, "critical": critical if critical is not None else False,
        "interval_s": interval_s or settings.health_check.interval, "golden_sha256": item.golden_sha256,
        "golden_path": item.golden_path, "baseline_path": item.baseline_path, "baseline": item.summary,
    } for item in fresh], actor=actor)
    inserted = {item.text: row for item, row in zip(fresh, rows, strict=True) if row is not None}
    results: list[dict[str, Any] | SelfHealError] = []
    for item in prepared:
        if isinstance(item, _Refused):
            append_event(session, *item.event, actor)
            results.append(CorruptedError(str(item)))
        elif isinstance(item, SelfHealError):
            results.append(item)
        elif item.text in inserted:
            results.append({"image": inserted[item.text], "golden_sha256": item.sha, "baseline_path": item.baseline_path,
                            "changed": False, "hash_verified": item.hash_verified,
                            "accepted_current": item.accepted_current})
        else:
            results.append(_record(session, item, settings=settings, critical=critical, interval_s=interval_s,
                                   actor=actor))
    return results
