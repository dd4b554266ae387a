"""Ad-hoc analysis of an uploaded `.rts.png` or PNG, in the dashboard process (DESIGN.md §3).

``analyze_upload(filename, data, settings, model=None)`` is what the Analyze page calls; it is a
plain function so tests can drive it without a browser. Limits are enforced here, on the server:

  * the byte size (``dashboard.max_upload_mb``) before anything is parsed;
  * the PNG signature;
  * the declared dimensions, refused by the codec (``read_image(max_pixels=…)``,
    ``dashboard.max_upload_pixels`` capped by ``pixelrts.max_pixels``) before pixels are allocated.

The health verdict comes from the same checker the worker uses (healing.images.service
default_checker: the full healing.analysis checker when installed, else the integrity checker).
The analysis numbers in the report come from healing.analysis.analyze_image (all four methods);
the maps drawn on the page (block entropy, edge magnitude, Fourier spectrum, block clusters) are
computed by small pure functions below. A vision model may be added, chosen by name from
``vision_model.upload_allowlist`` only (healing.vision.providers_for_upload refuses anything else,
URLs included).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dashboard.config import DashboardSettings, dashboard_settings
from healing.config import Settings
from healing.errors import CorruptedError, InputError, SelfHealError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENTROPY_TILE = 16  # pixels per side of one entropy/cluster block (16·16·4 = 1024 bytes)
CLUSTERS = 4
DISPLAY_MAX = 1024  # longer side, in pixels, of the picture the edge and Fourier maps are drawn from


class UploadRefused(Exception):
    """The upload was refused before analysis; the message is one line for the page."""


@dataclass
class UploadAnalysis:
    """Everything the Analyze page shows about one upload; ``report()`` is the downloadable JSON."""

    filename: str
    size: int
    sha256: str
    status: str
    check: dict[str, Any]
    integrity: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    pixels: np.ndarray | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    summaries: dict[str, Any] = field(default_factory=dict)
    vision: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def findings(self) -> list[dict[str, Any]]:
        found = list(self.check.get("findings") or [])
        for result in self.vision:
            found.extend(result.get("findings") or [])
        return found

    def report(self) -> dict[str, Any]:
        """The JSON report: file facts, the check result, integrity, analysis summaries, vision results."""
        return {
            "file": {"name": self.filename, "size": self.size, "sha256": self.sha256},
            "status": self.status,
            "error": self.error,
            "check": self.check,
            "integrity": self.integrity,
            "metadata": self.metadata,
            "analyses": self.summaries,
            "vision": self.vision,
        }


def safe_filename(name: str) -> str:
    """The upload's base name reduced to safe characters, keeping a .rts.png / .png suffix."""
    base = Path(name or "upload.png").name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "upload.png"
    return base[-120:]


def check_upload_limits(data: bytes, limits: DashboardSettings) -> None:
    """Refuse an upload that is too large or not a PNG (server side; the browser limit is only a hint)."""
    if len(data) > limits.max_upload_bytes:
        raise UploadRefused(f"the file is {len(data) / 1048576:.1f} MiB; uploads are limited to "
                            f"{limits.max_upload_mb} MiB (dashboard.max_upload_mb)")
    if not data:
        raise UploadRefused("the file is empty")
    if not data.startswith(PNG_SIGNATURE):
        raise UploadRefused("not a PNG file (PixelRTS images are PNGs: .rts.png)")


# --------------------------------------------------------------------------- display maps (pure)

def block_entropy_map(pixels: np.ndarray, tile: int = ENTROPY_TILE) -> np.ndarray:
    """Shannon entropy (bits per byte, 0..8) of the RGBA bytes of each ``tile``×``tile`` block.

    Along the Hilbert curve a square block of a PixelRTS grid is a contiguous run of the stream, so
    this is also the entropy of the payload bytes stored there. Edge blocks are cropped. Counted by
    the analysis engine one band of tiles at a time, so memory stays flat whatever the image's size.
    """
    from healing.analysis import tiled_entropy_map

    height, width = pixels.shape[:2]
    rows, cols = height // tile, width // tile
    if rows == 0 or cols == 0:
        return np.zeros((max(rows, 1), max(cols, 1)))
    return tiled_entropy_map(pixels[: rows * tile, : cols * tile], tile).blocks.reshape(rows, cols)


def _display_grey(pixels: np.ndarray, max_size: int) -> np.ndarray:
    """float32 luminance (mean of R, G, B) of ``pixels`` area-reduced to ``max_size`` on its longer side."""
    from healing.analysis.imaging import downscale

    small, _ = downscale(pixels, max_size)
    grey = small.astype(np.float32)
    return grey[:, :, :3].mean(axis=2) if grey.ndim == 3 else grey


def edge_magnitude(pixels: np.ndarray, max_size: int = DISPLAY_MAX) -> np.ndarray:
    """Sobel gradient magnitude of the luminance, on the picture reduced to ``max_size`` (display only)."""
    import cv2

    grey = _display_grey(pixels, max_size)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def fourier_spectrum(pixels: np.ndarray, max_size: int = DISPLAY_MAX) -> np.ndarray:
    """log(1 + |FFT|) of the luminance reduced to ``max_size``, zero frequency centred (display only)."""
    grey = _display_grey(pixels, max_size)
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean())))).astype(np.float32)


def block_means(pixels: np.ndarray, rows: int, cols: int, tile: int = ENTROPY_TILE) -> np.ndarray:
    """Mean byte value of each of the first ``rows``×``cols`` tiles, one band of tiles at a time."""
    array = pixels if pixels.ndim == 3 else pixels[:, :, None]
    means = np.empty((rows, cols))
    for row in range(rows):
        band = array[row * tile : (row + 1) * tile, : cols * tile]
        means[row] = band.reshape(tile, cols, tile, -1).mean(axis=(0, 2, 3))
    return means


def block_clusters(entropy: np.ndarray, pixels: np.ndarray, tile: int = ENTROPY_TILE, k: int = CLUSTERS) -> np.ndarray:
    """k-means labels (0..k-1) of blocks by (entropy, mean byte value): regions of similar content."""
    from sklearn.cluster import KMeans

    rows, cols = entropy.shape
    means = block_means(pixels, rows, cols, tile)
    features = np.column_stack([entropy.ravel() / 8.0, means.ravel() / 255.0])
    k = max(1, min(k, len(np.unique(features, axis=0))))
    labels = KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(features)
    return labels.reshape(rows, cols)


def display_cell(pixels: np.ndarray | None, shown: np.ndarray) -> tuple[float, float]:
    """(width, height) in image pixels of one value of a map drawn from a reduced picture."""
    if pixels is None or not shown.size:
        return 1.0, 1.0
    return pixels.shape[1] / shown.shape[1], pixels.shape[0] / shown.shape[0]


def summarise_maps(maps: dict[str, np.ndarray]) -> dict[str, Any]:
    """Numbers for the JSON report (the maps themselves stay on the page)."""
    out: dict[str, Any] = {}
    if "entropy" in maps:
        e = maps["entropy"]
        out["entropy"] = {"tile": ENTROPY_TILE, "mean": round(float(e.mean()), 4), "min": round(float(e.min()), 4) + 0.0,
                          "max": round(float(e.max()), 4), "std": round(float(e.std()), 4)}
    if "edges" in maps:
        g = maps["edges"]
        threshold = float(g.mean() + 2 * g.std())
        out["edges"] = {"mean_magnitude": round(float(g.mean()), 4),
                        "edge_density": round(float((g > threshold).mean()), 6) if g.size else 0.0}
    if "fourier" in maps:
        f = maps["fourier"]
        out["fourier"] = {"mean_log_magnitude": round(float(f.mean()), 4), "peak_log_magnitude": round(float(f.max()), 4)}
    if "clusters" in maps:
        labels, counts = np.unique(maps["clusters"], return_counts=True)
        out["clusters"] = {"k": int(labels.size), "blocks_per_cluster": [int(c) for c in counts]}
    return out


# --------------------------------------------------------------------------- the pipeline

def _vision_results(model: str | None, settings: Settings, path: Path, image: Any, entropy: np.ndarray | None,
                    metrics: dict[str, Any]) -> list[dict[str, Any]]:
    from healing.vision import AnalysisContext, providers_for_upload, run_providers

    providers = providers_for_upload(model, settings)  # UsageError for names off the allow-list
    outliers: list[dict[str, Any]] = []
    if entropy is not None and entropy.size > 1 and entropy.std() > 0:
        z = (entropy - entropy.mean()) / entropy.std()
        for r, c in zip(*np.nonzero(np.abs(z) >= 3.0), strict=True):
            outliers.append({"region": [int(c) * ENTROPY_TILE, int(r) * ENTROPY_TILE, ENTROPY_TILE, ENTROPY_TILE],
                             "entropy": float(entropy[r, c]), "zscore": float(z[r, c])})
    context = AnalysisContext(image_path=str(path), pixels=image.pixels,
                              grid_size=image.grid_size if image.is_pixelrts else None,
                              metadata=image.metadata, metrics=metrics, outliers=outliers[:64])
    return [result.to_dict() for result in run_providers(providers, context)]


def _hide_temp_path(check: dict[str, Any], temp_path: str, name: str) -> None:
    """Replace the temporary file's path by the upload's name: the path means nothing to the operator."""
    check["image_path"] = name
    if isinstance(check.get("recommendation"), str):
        check["recommendation"] = check["recommendation"].replace(temp_path, name)
    for item in check.get("findings") or []:
        if isinstance(item.get("description"), str):
            item["description"] = item["description"].replace(temp_path, name)


def png_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when the header is not there."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


UPLOAD_ADVICE = {
    "critical": "an uploaded file has no golden copy here: replace it with a known-good copy; register the good "
                "version (`selfheal register`) so that the worker can restore it next time",
    "warning": "compare it with a known-good copy of the file; register the good version (`selfheal register`) to "
               "have it checked against its own hash from now on",
}


def _check_upload(settings: Any, path: Path, name: str) -> dict[str, Any]:
    """The default health check of the uploaded file written at ``path``, as the operator's ``name``
    shows it (no temporary path), timed, with the upload's advice."""
    from healing.images.service import default_checker

    started = time.perf_counter()
    check = default_checker(settings).check_health(path).to_dict()
    _hide_temp_path(check, str(path), name)
    check.setdefault("duration_ms", round((time.perf_counter() - started) * 1000, 3))
    _upload_advice(check)
    return check


def _upload_advice(check: dict[str, Any]) -> None:
    """Recommendations written for registered images (`selfheal heal`, the golden copy) do not apply to an
    upload, which has no golden copy: replace them with what an operator can do with the file."""
    text = str(check.get("recommendation") or "")
    if "selfheal heal" in text or "golden" in text:
        check["recommendation"] = UPLOAD_ADVICE.get(str(check.get("status")), UPLOAD_ADVICE["warning"])


def _analyze_plain(name: str, data: bytes, digest: str, settings: Settings, limits: DashboardSettings, *,
                   maps: bool, why: str) -> UploadAnalysis:
    """A PNG that is not a PixelRTS image: the checker's statistics (no hash to verify) and the maps."""
    from healing.analysis import analyze_image, load_image

    with tempfile.TemporaryDirectory(prefix="selfheal-upload-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            loaded = load_image(path, max_pixels=limits.max_upload_pixels)
        except SelfHealError as exc:
            return UploadAnalysis(name, len(data), digest, "unknown", {"status": "unknown", "findings": []},
                                  error=str(exc))
        check = _check_upload(settings, path, name)
        analysis = UploadAnalysis(name, len(data), digest, str(check.get("status", "unknown")), check,
                                  metadata={"plain_png": why}, pixels=loaded.pixels)
        if maps:
            entropy = block_entropy_map(loaded.pixels)
            analysis.maps = {"entropy": entropy, "edges": edge_magnitude(loaded.pixels),
                             "fourier": fourier_spectrum(loaded.pixels), "clusters": block_clusters(entropy, loaded.pixels)}
            engine = analyze_image(loaded)
            engine["image_path"] = name
            analysis.summaries = {**engine, "display_maps": summarise_maps(analysis.maps)}
    return analysis


def analyze_upload(filename: str, data: bytes, settings: Settings, *, model: str | None = None,
                   maps: bool = True) -> UploadAnalysis:
    """Check and analyse one uploaded file; raises UploadRefused for input refused by the limits.

    An upload that parses but is damaged is not refused: it comes back with status critical (or
    unknown for an unreadable PNG) and the reason, like `selfheal check` would report it.
    """
    from healing.pixelrts import read_image, verify_image

    limits = dashboard_settings(settings)
    check_upload_limits(data, limits)
    name = safe_filename(filename)
    digest = hashlib.sha256(data).hexdigest()
    size = png_dimensions(data)
    if size is not None and size[0] * size[1] > limits.max_upload_pixels:
        raise UploadRefused(f"the image is {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels; the dashboard analyses "
                            f"at most {limits.max_upload_pixels:,} pixels (dashboard.max_upload_pixels)")
    try:
        image = read_image(name, data=data, max_pixels=limits.max_upload_pixels, use_sidecar=False,
                           max_metadata_bytes=settings.pixelrts.max_metadata_bytes)
    except InputError as exc:
        if "exceed the limit" in str(exc):
            raise UploadRefused(f"the image has more pixels than the dashboard analyses "
                                f"({limits.max_upload_pixels:,}, dashboard.max_upload_pixels)") from None
        # Not a PixelRTS image (not square, no metadata …): a plain PNG, judged by statistics.
        return _analyze_plain(name, data, digest, settings, limits, maps=maps, why=str(exc))
    except CorruptedError as exc:
        return UploadAnalysis(name, len(data), digest, "critical", {
            "status": "critical", "findings": [{"category": "structural", "severity": "high", "description": str(exc),
                                                "byte_range": None, "region": None, "source": "codec"}],
        }, error=str(exc))

    integrity = verify_image(image).to_dict()
    with tempfile.TemporaryDirectory(prefix="selfheal-upload-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        check = _check_upload(settings, path, name)
        analysis = UploadAnalysis(name, len(data), digest, str(check.get("status", "unknown")), check,
                                  integrity=integrity, metadata=image.metadata, pixels=image.pixels)
        if maps and image.pixels is not None:
            entropy = block_entropy_map(image.pixels)
            analysis.maps = {"entropy": entropy, "edges": edge_magnitude(image.pixels),
                             "fourier": fourier_spectrum(image.pixels),
                             "clusters": block_clusters(entropy, image.pixels)}
            # The report's numbers are the analysis engine's (the same as `selfheal analyze --method all`);
            # the maps above only draw the picture.
            from healing.analysis import analyze_image, load_image

            engine = analyze_image(load_image(path, max_pixels=limits.max_upload_pixels))
            engine["image_path"] = name
            analysis.summaries = {**engine, "display_maps": summarise_maps(analysis.maps)}
        if model:
            try:
                analysis.vision = _vision_results(model, settings, path, image, analysis.maps.get("entropy"),
                                                  dict(check.get("metrics") or {}))
            except SelfHealError as exc:
                raise UploadRefused(str(exc)) from None
    return analysis
