"""CLI commands of the codec: encode, decode, info, validate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from healing.errors import (
    EXIT_CRITICAL,
    EXIT_OK,
    EXIT_UNKNOWN,
    InputError,
    SelfHealError,
    UsageError,
    printable,
)


def _grid_size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer power of two, got {text!r}") from None


def _segment(text: str) -> tuple[str, int | None, int | None]:
    from healing.pixelrts._metadata import parse_segment

    try:
        return parse_segment(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--segment {text!r}: ")) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="pack a binary file into a PixelRTS v2 PNG",
                       description="Pack INPUT into OUTPUT (a .rts.png) plus an OUTPUT.meta.json sidecar.")
    p.add_argument("input", metavar="INPUT", help="binary file to encode ('-' reads stdin)")
    p.add_argument("output", metavar="OUTPUT", help="PNG to write, e.g. kernel.rts.png")
    p.add_argument("--grid-size", type=_grid_size, metavar="N", help="image side (power of two); default: smallest that fits")
    p.add_argument("--mode", choices=["standard", "code"], default="standard", help="code: WebAssembly-aware colouring")
    p.add_argument("--name", help="name stored in the metadata")
    p.add_argument("--type", dest="content_type", metavar="TYPE", help="content type stored in the metadata (kernel, initrd, wasm …)")
    p.add_argument("--description", help="description stored in the metadata")
    p.add_argument("--compression-level", type=int, choices=range(10), default=None, metavar="0-9",
                   help="PNG zlib level (default: pixelrts.compression_level, 6)")
    p.add_argument("--segment", action="append", type=_segment, default=[], metavar="NAME[:START:SIZE]",
                   help="record a named byte range of INPUT with its sha256 (repeatable; NAME alone: the whole input)")
    p.add_argument("--compress", choices=["zlib", "zstd"], default=None,
                   help="compress the payload before it goes into the pixels (zstd needs the optional zstandard package)")
    p.add_argument("--no-sidecar", action="store_true", help="do not write OUTPUT.meta.json")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="extract the original bytes from a PixelRTS v2 PNG",
                       description="Extract the payload. Exit 0 ok, 2 corrupted (with --verify), 3 unreadable.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="OUT", help="file to write (default: IMAGE minus .rts.png, '-' for stdout)")
    p.add_argument("--verify", action="store_true", help="refuse to write unless sha256, segments and padding check out")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="show the metadata and geometry of an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("validate", help="check structure and integrity (exit 0 valid, 2 corrupted, 3 unknown)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_validate)


def _limits() -> dict[str, int]:
    """The reading limits of the settings, as keyword arguments of ``read_image``."""
    from healing.config import load_settings

    px = load_settings().pixelrts
    return {"max_pixels": px.max_pixels, "max_metadata_bytes": px.max_metadata_bytes}


def _size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from healing.config import load_settings
    from healing.pixelrts import write_image
    from healing.pixelrts._metadata import segment_ranges
    from healing.progress import for_terminal
    from healing.safeio import read_regular

    settings = load_settings()
    if args.compress == "zstd":
        from healing.pixelrts._compress import require_zstandard

        require_zstandard()  # before a large input is read
    if args.input == "-":
        data = sys.stdin.buffer.read()
    else:
        data = read_regular(args.input, what="an input file")
    caller: dict[str, Any] = {}
    if args.content_type:
        caller["type"] = args.content_type
    if args.name:
        caller["name"] = args.name
    if args.description:
        caller["description"] = args.description
    segments = segment_ranges(args.segment, len(data))
    progress = for_terminal(len(data))
    level = settings.pixelrts.compression_level if args.compression_level is None else args.compression_level
    meta = write_image(data, args.output, grid_size=args.grid_size, mode=args.mode, metadata=caller,
                       segments=segments, compression=args.compress, compression_level=level, progress=progress,
                       sidecar=not args.no_sidecar, max_metadata_bytes=settings.pixelrts.max_metadata_bytes)
    if progress:
        progress.done()
    n = meta["grid_size"]
    extras = []
    if meta.get("compression"):
        extras.append(f"{meta['compression']['type']}-compressed to {meta['encoded_size']} bytes")
    if segments:
        extras.append(f"{len(segments)} segment(s)")
    print(printable(f"wrote {args.output}: {len(data)} bytes in a {n}x{n} grid, sha256 {meta['data_hash']}"
                    + "".join(f", {e}" for e in extras)))
    return EXIT_OK


def _default_output(image: str) -> str:
    name = Path(image).name
    for suffix in (".rts.png", ".png"):
        if name.lower().endswith(suffix):
            return str(Path(image).with_name(name[: -len(suffix)] or "payload"))
    return image + ".bin"


def cmd_decode(args: argparse.Namespace) -> int:
    from healing.pixelrts import read_image, verify_image
    from healing.progress import for_terminal
    from healing.safeio import refuse_symlink, write_atomic

    out = args.output or _default_output(args.image)
    if out != "-":
        if os.path.abspath(out) == os.path.abspath(args.image):
            raise UsageError("the output would overwrite the image; pass -o OUT")
        refuse_symlink(out)  # before the work: an existing link at the output is never written through
    progress = for_terminal(_size_of(args.image))
    image = read_image(args.image, progress=progress, **_limits())
    if progress:
        progress.done()
    if args.verify:
        if not image.is_pixelrts:
            raise InputError(f"{args.image}: not a PixelRTS image (no metadata), nothing to verify against")
        report = verify_image(image)
        if report.problems:
            print(printable(f"selfheal: {args.image}: corrupted: {report.problems[0].message}"), file=sys.stderr)
            return EXIT_CRITICAL
    payload = image.payload
    if out == "-":
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
        return EXIT_OK
    write_atomic(out, payload)
    print(printable(f"wrote {out}: {len(payload)} bytes" + (" (verified)" if args.verify else "")), file=sys.stderr)
    return EXIT_OK


def _info_dict(args: argparse.Namespace) -> dict[str, Any]:
    from healing.pixelrts import read_image

    image = read_image(args.image, **_limits())
    meta = dict(image.metadata or {})
    if "original_data_b64" in meta:
        meta["original_data_b64"] = f"<{len(meta['original_data_b64'])} base64 characters>"
    return {
        "path": args.image,
        "pixelrts": image.is_pixelrts,
        "grid_size": image.grid_size,
        "capacity": image.capacity,
        "data_size": image.data_size,
        "file_size": image.file_size,
        "metadata_source": image.metadata_source,
        "png": image.png_info,
        "metadata": meta if image.is_pixelrts else None,
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = _info_dict(args)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    meta = info["metadata"] or {}
    lines = [f"{info['path']}",
             f"  PixelRTS:    {'yes, metadata from ' + str(info['metadata_source']) if info['pixelrts'] else 'no (plain PNG)'}",
             f"  grid:        {info['grid_size']}x{info['grid_size']} ({info['capacity']} bytes capacity)",
             f"  data size:   {info['data_size']} bytes   file size: {info['file_size']} bytes"]
    if meta:
        lines.append(f"  format:      {meta.get('format')} v{meta.get('format_version')}  encoding {meta.get('encoding_mode')}")
        lines += [f"  {key + ':':<12} {meta[key]}" for key in ("type", "name", "description", "content_version") if key in meta]
        lines.append(f"  sha256:      {meta.get('data_hash')}")
        if meta.get("compression"):
            lines.append(f"  compression: {meta['compression'].get('type')}  encoded size {meta.get('encoded_size')}")
        if meta.get("offsets"):
            lines.append(f"  segments:    {', '.join(meta['offsets'])}")
    # Metadata values are the file's author's text: control characters (ANSI, CR/LF) are shown escaped.
    print("\n".join(printable(line) for line in lines))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from healing.pixelrts import read_image, verify_image
    from healing.progress import for_terminal

    progress = None if args.json else for_terminal(_size_of(args.image))
    try:
        image = read_image(args.image, progress=progress, **_limits())
        if progress:
            progress.done()
        report = verify_image(image)
    except SelfHealError as exc:
        if progress:
            progress.done()
        if not args.json:
            raise
        status = "corrupted" if exc.exit_code == EXIT_CRITICAL else "unknown"
        print(json.dumps({"path": args.image, "valid": False, "status": status, "error": str(exc)}, indent=2))
        return exc.exit_code
    if not image.is_pixelrts:
        code, status = EXIT_UNKNOWN, "unknown"
        message = f"{args.image}: not a PixelRTS image (no PixelRTS metadata): integrity cannot be checked"
    elif report.ok:
        code, status = EXIT_OK, "valid"
        message = f"{args.image}: valid PixelRTS v2, {image.data_size} bytes, sha256 verified"
        message += "".join(f" (note: {note})" for note in report.notes)
    else:
        code, status = EXIT_CRITICAL, "corrupted"
        message = f"{args.image}: corrupted: " + "; ".join(p.message for p in report.problems)
    if args.json:
        out = report.to_dict()
        out["status"] = status
        print(json.dumps(out, indent=2))
    elif code == EXIT_UNKNOWN:
        print(f"selfheal: {printable(message)}", file=sys.stderr)
    else:
        print(printable(message), file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code
