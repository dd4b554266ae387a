"""`selfheal parity create|verify IMAGE`: erasure-coded parity of an image file (issue 14).

Exit codes follow `check`/`validate` (DESIGN.md §4): ``verify`` exits 0 when the file and its parity are
intact, 1 when the file is intact but the parity is partly damaged (less redundancy left), 2 when the
file is damaged (the output says whether the parity can repair it), 3 when there is no usable parity or
the file cannot be read. ``create`` exits 0, or 2 when only damaged content is at hand, 3 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from healing.errors import (
    EXIT_CRITICAL,
    EXIT_OK,
    EXIT_WARNING,
    CorruptedError,
    InputError,
    SelfHealError,
    printable,
)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="erasure-coded parity of an image: create it, or verify the image against it",
                       description="Parity over the image file's bytes (zfec Reed-Solomon, interleaved blocks), kept in the "
                                   "golden store beside the golden copy; `heal` repairs from it before restoring a golden copy.")
    psub = p.add_subparsers(dest="parity_command", metavar="ACTION", parser_class=type(p))
    psub.required = True
    c = psub.add_parser("create", help="compute the parity of a registered image (or of any file with --out)",
                        description="For a registered IMAGE: parity of its registered content (the file if it still matches, "
                                    "else its golden copy) beside the golden copy. With --out: parity of IMAGE as it is now, "
                                    "written to FILE. Exit 0 written, 2 only damaged content at hand, 3 bad input.")
    c.add_argument("image", metavar="IMAGE")
    c.add_argument("--out", metavar="FILE", help="write the parity here (any image, registered or not)")
    c.add_argument("--percent", type=_percent, metavar="P", help="parity overhead in %% (default healing.parity_percent)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_create)
    v = psub.add_parser("verify", help="name the damaged blocks of IMAGE and whether its parity can repair them",
                        description="Exit 0 file and parity intact, 1 file intact but parity partly damaged, 2 file damaged "
                                    "(repairable or not: see the output), 3 no usable parity or unreadable file.")
    v.add_argument("image", metavar="IMAGE")
    v.add_argument("--parity", metavar="FILE", help="the parity file (default: the registered image's)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_verify)


def _settings() -> Any:
    from healing.config import load_settings

    return load_settings()


def _registered(settings: Any, image: str) -> dict[str, Any] | None:
    from healing.images.registry import normalise_path
    from storage import queries
    from storage.engine import session_scope
    from storage.migrate import upgrade

    upgrade()
    with session_scope(write=False) as session:
        return queries.get_image(session, path=normalise_path(image))


def _image_bytes(path: str, *, registered: bool, limit: int | None = None) -> tuple[bytes, str | None]:
    """The file's bytes (at most ``limit`` + 1 when given: all a repair can use); a registered image's
    entry is never followed (a link or FIFO there counts as lost content, with a note), an ad-hoc path
    must be a regular file."""
    from healing.images.parity import read_image_bytes
    from healing.safeio import lstat_kind, read_regular

    if not registered:
        if limit is not None:
            return read_image_bytes(path, limit, follow_symlinks=True), None
        return read_regular(path, what="an image file"), None
    kind = lstat_kind(path)
    if kind == "a regular file":
        if limit is not None:
            return read_image_bytes(path, limit), None
        return read_regular(path, follow_symlinks=False, what="an image file"), None
    return b"", f"registered image is {kind or 'missing'}: all of its content counts as lost"


def cmd_create(args: argparse.Namespace) -> int:
    from healing.images import parity as P
    from healing.images.golden import GoldenStore

    settings = _settings()
    percent = args.percent or settings.healing.parity_percent
    if percent <= 0:
        raise InputError("healing.parity_percent is 0 (parity off); pass --percent P to make parity anyway")
    start = time.perf_counter()
    if args.out:
        data, _ = _image_bytes(args.image, registered=False)
        target = Path(args.out)
        parity = P.write_parity(data, target, percent)
        sha = parity.file_sha256
    else:
        image = _registered(settings, args.image)
        if image is None or not image.get("golden_sha256"):
            raise InputError(f"{args.image}: not registered; register it, or pass --out FILE for parity of any file")
        sha = str(image["golden_sha256"])
        data, _ = _image_bytes(image["path"], registered=True)
        if hashlib.sha256(data).hexdigest() != sha:
            store = GoldenStore(settings.golden_dir)
            ref = store.ref(sha)
            if not store.is_intact(ref):
                raise CorruptedError(f"{image['path']}: differs from its registered content and the golden copy is missing "
                                     "or damaged; parity of damaged bytes is not made (heal or re-register first)")
            from healing.safeio import read_regular

            data = read_regular(ref.path, follow_symlinks=False)
        target = P.parity_path(settings.golden_dir, sha)
        parity = P.write_parity(data, target, percent)
    seconds = time.perf_counter() - start
    info = P.ParityInfo(str(target), sha, percent, parity.layout.capacity(), round(seconds, 3))
    if args.json:
        print(json.dumps(info.to_dict(), sort_keys=True))
        return EXIT_OK
    cap = info.capacity
    print(printable(f"parity written to {target}: {cap['parity_bytes']} bytes ({cap['parity_percent']} % of the file), "
                    f"blocks of {cap['block_size']} bytes, recovers a burst of {cap['recoverable_burst_bytes']} bytes or "
                    f"any {cap['scattered_blocks_guaranteed']} damaged blocks (up to {cap['scattered_blocks_max']} spread out)"))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from healing.images import parity as P

    settings = _settings()
    registered = args.parity is None
    if registered:
        image = _registered(settings, args.image)
        if image is None or not image.get("golden_sha256"):
            raise InputError(f"{args.image}: not registered; pass --parity FILE to verify against a parity file")
        path, parity_file = str(image["path"]), P.parity_path(settings.golden_dir, str(image["golden_sha256"]))
    else:
        path, parity_file = args.image, Path(args.parity)
    parity = P.load(parity_file)  # ParityError: exit 3 (no usable parity)
    data, note = _image_bytes(path, registered=registered, limit=parity.layout.file_length)
    diagnosis = P.diagnose(data, parity)
    if registered:
        with contextlib.suppress(SelfHealError):  # the verdict stands even where the time cannot be kept
            P.record_verified(parity_file, diagnosis)
    if diagnosis.file_intact:
        status, code = ("intact", EXIT_OK) if diagnosis.parity_intact else ("parity_damaged", EXIT_WARNING)
    else:
        status, code = ("repairable" if diagnosis.repairable else "unrepairable"), EXIT_CRITICAL
    if args.json:
        print(json.dumps({"image_path": path, "parity_path": str(parity_file), "status": status, "note": note,
                          **diagnosis.to_dict()}, sort_keys=True))
        return code
    print(printable(_describe(path, status, diagnosis, note)))
    return code


def _describe(path: str, status: str, d: Any, note: str | None) -> str:
    size = d.layout.block_size
    parity_note = "" if d.parity_intact else (f"; parity: {len(d.damaged_shards)} damaged shard(s), "
                                              f"{d.header_copies_ok}/2 header copies intact")
    if status in ("intact", "parity_damaged"):
        return f"{path}: intact ({d.expected_length} bytes, {d.layout.n_blocks} blocks verified){parity_note}"
    ranges = ", ".join(f"[{a}, {b})" for a, b in d.damaged_ranges()[:8]) + (" …" if len(d.damaged_ranges()) > 8 else "")
    short = f"; file is {d.file_length} of {d.expected_length} bytes" if d.file_length != d.expected_length else ""
    verdict = ("repairable from parity (`selfheal heal`)" if status == "repairable"
               else f"beyond the parity's capacity ({len(d.overfull_groups)} group(s) lost more than {d.layout.r} shares)")
    lead = f"{note}; " if note else ""
    return (f"{path}: {lead}{len(d.damaged_blocks)} damaged block(s) of {size} bytes at {ranges or 'none'}{short}"
            f"{parity_note}; {verdict}")
