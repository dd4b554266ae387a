"""Reading an image for analysis: a PixelRTS grid (through the codec) or a plain PNG.

Square power-of-two PNGs go through the codec, which yields the pixels, the curve-ordered stream and
(for PixelRTS) the metadata; their integrity is then verified. Other PNGs (any size, no curve) are
decoded directly and judged by statistics only. Errors follow the codec: InputError for input that
cannot be judged (exit 3), CorruptedError for a damaged container (exit 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from healing.errors import InputError


@dataclass
class LoadedImage:
    """pixels (H, W, 4) RGBA; grid_size/stream for curve-ordered grids; report for PixelRTS images.

    For curve-ordered grids the codec hands over only the stream (its fastest path); ``pixels`` is
    rebuilt from it on first use, and :meth:`downscaled` works from the stream without it.
    """

    path: str
    _pixels: np.ndarray | None
    grid_size: int | None
    stream: np.ndarray | None
    image: Any | None  # healing.pixelrts.PixelRTSImage
    report: Any | None  # healing.pixelrts.VerifyReport (PixelRTS only)
    file_size: int
    file_sha256: str | None

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            from healing.pixelrts.codec import _noop, _stream_to_pixels

            assert self.stream is not None and self.grid_size is not None
            n = self.grid_size
            self._pixels = _stream_to_pixels(self.stream.view(np.uint32), n, _noop).view(np.uint8).reshape(n, n, 4)
        return self._pixels

    @property
    def shape(self) -> tuple[int, int]:
        if self._pixels is None and self.grid_size is not None:
            return self.grid_size, self.grid_size
        return self.pixels.shape[:2]

    def downscaled(self, max_size: int | None) -> tuple[np.ndarray, float]:
        """The image area-averaged to fit ``max_size`` (see imaging.downscale), from the stream when possible.

        An aligned k×k square of a Hilbert grid is a run of k² consecutive curve positions, and those
        squares themselves follow the (n/k)-sized curve; so averaging runs of the stream and placing
        them with the smaller curve's table gives the area-averaged picture without the full pixels.
        """
        from healing.analysis.imaging import downscale

        n = self.grid_size
        if self._pixels is not None or self.stream is None or n is None or not max_size or n <= max_size:
            return downscale(self.pixels, max_size)
        import cv2

        from healing.pixelrts import linear_table

        m = 1
        while m * 2 <= max_size:
            m *= 2
        k2 = (n // m) ** 2
        # Area-resize each run to one pixel: OpenCV's SIMD averaging is ~25x faster than a NumPy reduce here.
        means = cv2.resize(self.stream.reshape(m * m, k2, 4), (1, m * m), interpolation=cv2.INTER_AREA).reshape(m * m, 4)
        small = np.empty((m * m, 4), dtype=np.uint8)
        small[linear_table(m)] = means
        return small.reshape(m, m, 4), n / m

    @property
    def is_pixelrts(self) -> bool:
        return self.image is not None and self.image.is_pixelrts

    @property
    def metadata(self) -> dict[str, Any] | None:
        return self.image.metadata if self.image is not None else None


def _read_plain(path: Path, data: bytes, structure: Any, file_hash: bool) -> LoadedImage:
    import hashlib

    from healing.pixelrts.codec import decode_plain

    rgba = decode_plain(data, structure)
    return LoadedImage(str(path), rgba, None, None, None, None, len(data),
                       hashlib.sha256(data).hexdigest() if file_hash else None)


def load_image(path: str | os.PathLike[str], *, max_pixels: int | None = None, file_hash: bool = False,
               max_metadata_bytes: int | None = None) -> LoadedImage:
    """Read ``path`` for analysis (see the module docstring), always through the codec's checks (regular
    file only, pixel limit, size bound), so its bytes never reach libpng unproven."""
    from healing.pixelrts import DEFAULT_MAX_PIXELS, read_image, verify_image
    from healing.pixelrts._hilbert import is_power_of_two
    from healing.pixelrts.codec import read_png_bytes, read_structure

    path = Path(path)
    limit = max_pixels or DEFAULT_MAX_PIXELS
    try:
        image = read_image(path, max_pixels=limit, max_metadata_bytes=max_metadata_bytes, file_hash=file_hash,
                           payload_only=True)
    except InputError:
        # Read again rather than hold the file's bytes through a grid's decode (peak memory).
        data = read_png_bytes(path, max_pixels=limit, max_metadata_bytes=max_metadata_bytes)
        structure = read_structure(data, max_metadata_bytes)
        header = structure.header
        if header.width == header.height and is_power_of_two(header.width):
            raise
        # A plain PNG of any other shape: no curve, no hash — statistics only.
        return _read_plain(path, data, structure, file_hash)
    report = verify_image(image) if image.is_pixelrts else None
    return LoadedImage(str(path), image.pixels, image.grid_size, image.stream, image, report, image.file_size,
                       image.file_sha256)
