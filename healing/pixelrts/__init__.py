"""PixelRTS v2 codec: binary data as RGBA pixels along a Hilbert curve in a PNG (PIXELRTS_V2.md)."""

from healing.pixelrts._hilbert import curve_index_grid, d2xy, linear_table
from healing.pixelrts._metadata import grid_size_for
from healing.pixelrts.codec import (
    DEFAULT_MAX_PIXELS,
    EncodedImage,
    PixelRTSImage,
    Problem,
    VerifyReport,
    decode,
    decode_range,
    encode,
    read_image,
    read_metadata,
    verify,
    verify_image,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EncodedImage",
    "PixelRTSImage",
    "Problem",
    "VerifyReport",
    "curve_index_grid",
    "d2xy",
    "decode",
    "decode_range",
    "encode",
    "grid_size_for",
    "linear_table",
    "read_image",
    "read_metadata",
    "verify",
    "verify_image",
    "write_image",
]
