"""PixelRTS v2 codec: binary data as RGBA pixels along a Hilbert curve in a PNG (PIXELRTS_V2.md).

Names are loaded on first use (PEP 562) so that importing the package — as the CLI does to register
its commands — does not pull in NumPy and OpenCV.
"""

from __future__ import annotations

from healing._lazy import lazy_exports

_EXPORTS = {
    "curve_index_grid": "_hilbert",
    "d2xy": "_hilbert",
    "linear_table": "_hilbert",
    "grid_size_for": "_metadata",
    "DEFAULT_MAX_PIXELS": "codec",
    "EncodedImage": "codec",
    "PixelRTSImage": "codec",
    "Problem": "codec",
    "VerifyReport": "codec",
    "decode": "codec",
    "decode_range": "codec",
    "encode": "codec",
    "read_image": "codec",
    "read_metadata": "codec",
    "verify": "codec",
    "verify_image": "codec",
    "write_image": "codec",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
