"""`selfheal check`, `baseline`, `analyze` and `vision` (DESIGN.md §4).

Only the standard library is imported at module level; NumPy, OpenCV and the checker are imported
inside the handlers so that `selfheal --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from healing.errors import CorruptedError, InputError, UsageError, printable

_EXIT = {"healthy": 0, "warning": 1, "critical": 2, "unknown": 3}
# "The worst over all images": a critical image needs action more than one that could not be judged.
_SEVERITY = {"healthy": 0, "warning": 1, "unknown": 2, "critical": 3}
METHODS = ("entropy", "edges", "fourier", "clusters", "all")


def register(sub: Any) -> None:
    from healing.vision.selection import add_model_arguments

    p = sub.add_parser("check", help="health check of PixelRTS images or PNGs (exit 0/1/2/3, the worst of all)",
                       description="Integrity first (hashes, padding, structure), then statistics where no hash "
                                   "can decide. Exit 0 healthy, 1 warning, 2 critical, 3 unknown; with several "
                                   "images the highest of their codes.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print the check object (a list for several images)")
    p.add_argument("--output", metavar="FILE", help="also write the JSON result(s) to FILE")
    p.add_argument("--baseline", metavar="FILE", help="baseline JSON from `selfheal baseline`, to locate damage")
    p.add_argument("--verbose", action="store_true", help="print metrics as well")
    add_model_arguments(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("baseline", help="record per-block hashes, the entropy map and metrics of an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="where to write the baseline JSON")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("analyze", help="entropy, edge, Fourier and cluster analysis of an image (JSON)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--edge-method", choices=("sobel", "canny"), default="sobel")
    p.add_argument("--output", metavar="FILE", help="write the JSON to FILE instead of standard output")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("vision", help="entropy overlay, visual summary or pattern pictures of an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--action", choices=("entropy", "summary", "patterns"), required=True)
    p.add_argument("--output-dir", metavar="DIR", default=".", help="where overlays are written (default: .)")
    p.add_argument("--colormap", metavar="NAME", default="viridis", help="OpenCV colormap name (default: viridis)")
    p.set_defaults(func=cmd_vision)


def _write_json(path: str, data: Any) -> None:
    """Atomically, never through a symlink (an existing link at ``path`` is refused, exit 3)."""
    from healing.safeio import write_atomic

    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _print_result(result: Any, verbose: bool) -> None:
    data = result.to_dict()
    lines = [f"{data['image_path']}: {data['status'].upper()} (confidence {data['confidence']:.2f}, "
             f"{data['duration_ms']:.0f} ms)"]
    for f in data["findings"]:
        where = ""
        if f.get("byte_range"):
            where += f" bytes [{f['byte_range'][0]}, {f['byte_range'][1]})"
        if f.get("region"):
            where += " region x={} y={} w={} h={}".format(*f["region"])
        lines.append(f"  - [{f['severity']}] {f['category']}: {f['description']}{where} ({f['source']})")
    lines.append(f"  recommendation: {data['recommendation']}")
    if verbose:
        lines += [f"  {key}: {value}" for key, value in data["metrics"].items()]
    # Paths and descriptions may carry a file author's text: control characters are shown escaped.
    print("\n".join(printable(line) for line in lines))


def cmd_check(args: argparse.Namespace) -> int:
    from healing.analysis.baseline import load_baseline
    from healing.analysis.health import VLMHealthChecker
    from healing.config import load_settings

    baseline = load_baseline(args.baseline) if args.baseline else None
    if args.output:
        from healing.safeio import refuse_symlink

        refuse_symlink(args.output)  # refused before the work, not after it
    checker = VLMHealthChecker(load_settings(), models=args.model, endpoint=args.endpoint)
    if args.model is not None or args.endpoint is not None:
        checker.providers_for()  # name or endpoint errors are usage errors before any work is done
    results = [checker.check_health(path, baseline=baseline) for path in args.images]
    payload: Any = [r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict()
    if args.output:
        _write_json(args.output, payload)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        for result in results:
            _print_result(result, args.verbose)
    worst = max((r.to_dict()["status"] for r in results), key=_SEVERITY.__getitem__)
    return _EXIT[worst]


def cmd_baseline(args: argparse.Namespace) -> int:
    from healing.analysis.baseline import build_baseline
    from healing.analysis.engine import image_entropy
    from healing.analysis.health import VLMHealthChecker
    from healing.analysis.loading import load_image
    from healing.analysis.status import iso_now
    from healing.config import load_settings

    settings = load_settings()
    loaded = load_image(args.image, max_pixels=settings.pixelrts.max_pixels, file_hash=True,
                        max_metadata_bytes=settings.pixelrts.max_metadata_bytes)
    if loaded.stream is None or loaded.grid_size is None:
        raise InputError(f"{args.image}: a baseline needs a square power-of-two PNG (a PixelRTS grid)")
    if loaded.report is not None and loaded.report.hash_verified is False:
        raise CorruptedError(f"{args.image}: refusing to record a baseline of a damaged image: "
                             f"{loaded.report.problems[0].message}")
    block_size = settings.health_check.block_size
    check = VLMHealthChecker(settings).check_health(args.image)
    emap = image_entropy(loaded, block_size)
    document = build_baseline(stream=loaded.stream, grid_size=loaded.grid_size, block_size=block_size,
                              file_sha256=loaded.file_sha256 or "", data_hash=(loaded.metadata or {}).get("data_hash"),
                              block_entropy=emap.blocks, image_path=str(args.image), created=iso_now(),
                              metrics=check.metrics)
    _write_json(args.output, document)
    print(f"{args.output}: baseline of {args.image} ({len(document['block_sha256'])} blocks of {block_size} bytes, "
          f"mean entropy {document['mean_entropy']:.2f} bits/byte)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from healing.analysis.engine import METHODS as ENGINE_METHODS
    from healing.analysis.engine import analyze_image
    from healing.analysis.loading import load_image
    from healing.config import load_settings

    settings = load_settings()
    methods = ENGINE_METHODS if args.method == "all" else (args.method,)
    loaded = load_image(args.image, max_pixels=settings.pixelrts.max_pixels,
                        max_metadata_bytes=settings.pixelrts.max_metadata_bytes)
    result = analyze_image(loaded, methods, edge_method=args.edge_method, block_size=settings.health_check.block_size)
    if args.output:
        _write_json(args.output, result)
        print(f"{args.output}: {args.method} analysis of {args.image}")
    else:
        print(json.dumps(result, indent=2))
    return 0


def cmd_vision(args: argparse.Namespace) -> int:
    from healing.analysis import overlays
    from healing.analysis.engine import PixelRTSVisionAnalyzer

    try:
        overlays.colormap_id(args.colormap)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    analyzer = PixelRTSVisionAnalyzer(args.image)
    out_dir = Path(args.output_dir)
    stem = Path(args.image).name.removesuffix(".png").removesuffix(".rts")
    if args.action == "entropy":
        path = analyzer.generate_entropy_overlay(out_dir, args.colormap)
        summary = analyzer.get_visual_summary()["entropy"]
        print(f"{path}: entropy overlay (mean {summary['mean']:.2f}, min {summary['min']:.2f}, "
              f"max {summary['max']:.2f} bits/byte)")
        return 0
    if args.action == "summary":
        print(json.dumps(analyzer.get_visual_summary(), indent=2))
        return 0
    edges = analyzer.detect_edges_sobel()
    fourier = analyzer.analyze_fourier()
    clusters = analyzer.detect_clusters()
    assert edges.edges is not None and fourier.spectrum is not None
    written = [
        overlays.write_png(out_dir / f"{stem}_edges.png", overlays.edge_overlay(analyzer.image, edges.edges)),
        overlays.write_png(out_dir / f"{stem}_fourier.png", overlays.spectrum_image(fourier.spectrum, args.colormap)),
        overlays.write_png(out_dir / f"{stem}_clusters.png", overlays.findings_overlay(
            analyzer.loaded.pixels, [{"region": r["region"], "severity": "low"} for r in clusters.regions_of_interest])),
    ]
    print(json.dumps({"edges": edges.to_dict(), "fourier": fourier.to_dict(), "clusters": clusters.to_dict(),
                      "written": [str(p) for p in written]}, indent=2))
    return 0
