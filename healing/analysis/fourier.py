"""Fourier analysis: magnitude spectrum, dominant frequency, periodic patterns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from healing.analysis._results import ResultMapping
from healing.analysis.imaging import to_grey

DC_FRACTION = 0.02  # radius of the masked zero-frequency disc, as a fraction of the shorter side
PERIODIC_RATIO = 8.0  # a peak this many times the mean magnitude is a periodic pattern


@dataclass
class FourierResult(ResultMapping):
    """Spectrum facts. Frequencies are cycles per pixel of the full image (fx along x, fy along y)."""

    dominant_frequency: tuple[float, float] | None
    dominant_period: float | None  # pixels per cycle of the dominant frequency
    peak_ratio: float  # dominant peak / mean magnitude outside the DC disc
    has_periodic_patterns: bool
    periodic_regions: list[dict[str, float]]
    dc_radius: int
    spectrum: np.ndarray | None = field(default=None, repr=False)  # log(1 + |F|), zero frequency centred

    def to_dict(self) -> dict[str, Any]:
        return {
            "dominant_frequency": list(self.dominant_frequency) if self.dominant_frequency else None,
            "dominant_period": self.dominant_period, "peak_ratio": round(self.peak_ratio, 3),
            "has_periodic_patterns": self.has_periodic_patterns, "periodic_regions": self.periodic_regions,
            "dc_radius": self.dc_radius,
        }


def analyze_fourier(pixels: np.ndarray, max_frequencies: int = 10, *, scale: float = 1.0,
                    dc_fraction: float = DC_FRACTION, periodic_ratio: float = PERIODIC_RATIO) -> FourierResult:
    """2-D FFT of the luminance with the zero-frequency disc masked (radius ∝ image size).

    Peaks are taken from one half-plane (the spectrum of a real image is symmetric) and reported as
    ``periodic_regions``: up to ``max_frequencies`` local maxima above ``periodic_ratio`` × the
    mean magnitude, strongest first. ``scale`` converts a downscaled image's frequencies back to
    the full image.
    """
    grey = to_grey(pixels).astype(np.float32)
    height, width = grey.shape
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean())))
    cy, cx = height // 2, width // 2
    radius = max(1, round(min(height, width) * dc_fraction))
    yy, xx = np.ogrid[:height, :width]
    masked = spectrum.copy()
    masked[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius] = 0.0
    # Keep one half-plane: fy > 0, or fy == 0 and fx > 0.
    masked[:cy] = 0.0
    masked[cy, : cx + 1] = 0.0
    outside = spectrum[(yy - cy) ** 2 + (xx - cx) ** 2 > radius * radius]
    mean = float(outside.mean()) if outside.size else 0.0
    log_spectrum = np.log1p(spectrum).astype(np.float32)
    if mean <= 0 or not masked.any():
        return FourierResult(None, None, 0.0, False, [], radius, log_spectrum)

    def freq(iy: int, ix: int) -> tuple[float, float]:
        return (round((ix - cx) / width / scale, 6), round((iy - cy) / height / scale, 6))

    peak = int(np.argmax(masked))
    py, px = divmod(peak, width)
    ratio = float(masked[py, px]) / mean
    fx, fy = freq(py, px)
    period = round(1.0 / float(np.hypot(fx, fy)), 3)

    # Local maxima over a 3×3 neighbourhood (strict on the spectrum itself), above the ratio.
    import cv2

    dilated = cv2.dilate(masked, np.ones((3, 3), np.uint8))
    candidates = np.flatnonzero(((masked >= dilated) & (masked > periodic_ratio * mean)).ravel())
    candidates = candidates[np.argsort(-masked.ravel()[candidates], kind="stable")][:max(0, max_frequencies)]
    regions = []
    for index in candidates:
        iy, ix = divmod(int(index), width)
        cfx, cfy = freq(iy, ix)
        regions.append({"fx": cfx, "fy": cfy, "period": round(1.0 / float(np.hypot(cfx, cfy)), 3),
                        "magnitude": round(float(masked[iy, ix]), 3), "ratio": round(float(masked[iy, ix]) / mean, 3)})
    return FourierResult((fx, fy), period, ratio, ratio >= periodic_ratio, regions, radius, log_spectrum)
