"""Small image helpers shared by the analysis functions: grey conversion and area downscaling."""

from __future__ import annotations

import numpy as np


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """uint8 luminance of an RGBA/RGB/grey image (alpha ignored: it is composited away on screen)."""
    import cv2

    array = np.asarray(pixels)
    if array.ndim == 2:
        return array.astype(np.uint8, copy=False)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_RGBA2GRAY)
    if array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
    return array[:, :, 0].astype(np.uint8, copy=False)


def downscale(pixels: np.ndarray, max_size: int | None) -> tuple[np.ndarray, float]:
    """(image, scale): ``pixels`` reduced by area averaging to fit ``max_size`` on its longer side.

    ``scale`` is full-image pixels per analysed pixel (1.0 when nothing was reduced). Area averaging
    of an aligned 2^k square is also the average of a run of 4^k curve positions, so the reduced
    image is still a faithful picture of the data's texture.
    """
    import cv2

    height, width = pixels.shape[:2]
    if not max_size or max(height, width) <= max_size:
        return pixels, 1.0
    factor = max(height, width) / max_size
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), factor
